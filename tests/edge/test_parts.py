"""The exporter contract for models that export to several files: ``ExportedModel.parts``, quantized
part by part, then the exporter's ``assemble`` (no model needed: files stand for the models)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunewright.edge import ExportedModel


def folder_with(root: Path, name: str, files: dict[str, str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file, text in files.items():
        (folder / file).write_text(text)
    return folder


class HalvesAdapters:
    """A quantizer that applies to adapter parts only, and says what it did."""

    description, auto_candidate = "test", False

    def supports(self, exported: ExportedModel) -> bool:
        return exported.task_kind == "adapter"

    def quantize(self, exported, out_dir, calibration):
        assert calibration == []  # a part's inputs are not the task's
        out_dir.mkdir(parents=True)
        for name in exported.files():
            (out_dir / name).write_text("half " + (Path(exported.folder) / name).read_text())
        return exported.moved(out_dir, quantization={"name": "half", "bits": 16})


class ListsWhatChanged:
    """An exporter's ``assemble``: records the rewritten parts in a file of its own."""

    def __init__(self):
        self.calls = 0

    def assemble(self, candidate: ExportedModel, out_dir: Path) -> ExportedModel:
        self.calls += 1
        (out_dir / "index.txt").write_text(",".join(sorted(candidate.quantization["applies_to"])))
        return candidate.moved(
            out_dir, model_entries={**candidate.model_entries, "index_file": "index.txt"}
        )


def base_with_two_adapters(root: Path) -> ExportedModel:
    """A base model and two adapters on it: the shape a multi-adapter bundle will have."""
    shared = folder_with(root, "shared", {"tokenizer-extra.txt": "t"})
    parts = {
        "base": ExportedModel(folder_with(root, "base", {"model.onnx": "base"}), "causal_lm"),
        "adapter-a": ExportedModel(folder_with(root, "a", {"a.onnx_adapter": "a"}), "adapter"),
        "adapter-b": ExportedModel(folder_with(root, "b", {"b.onnx_adapter": "b"}), "adapter"),
    }
    return ExportedModel(
        shared,
        "causal_lm",
        model_file="model.onnx",
        parts=parts,
        model_entries={"adapters": ["a.onnx_adapter", "b.onnx_adapter"]},
    )


def test_each_part_a_quantizer_supports_is_rewritten_and_the_exporter_assembles_the_rest(tmp_path):
    from tunewright.edge.export import _supports, quantize_export

    exported = base_with_two_adapters(tmp_path / "export")
    quantizer, exporter = HalvesAdapters(), ListsWhatChanged()
    assert _supports(quantizer, exported)
    candidate = quantize_export(
        quantizer, "half", exported, tmp_path / "q", [{"input_ids": None}], exporter
    )
    assert candidate.quantization == {
        "name": "half",
        "bits": 16,
        "applies_to": ["adapter-a", "adapter-b"],
    }
    assert exporter.calls == 1 and candidate.model_entries["index_file"] == "index.txt"
    # the bundle lays every file side by side: the base as exported, the adapters rewritten
    layout = {name: path.read_text() for name, path in candidate.layout().items()}
    assert layout == {
        "index.txt": "adapter-a,adapter-b",
        "model.onnx": "base",
        "a.onnx_adapter": "half a",
        "b.onnx_adapter": "half b",
    }
    assert candidate.size_bytes() == sum(len(text) for text in layout.values())


def test_no_quantization_leaves_the_parts_and_asks_no_assembly(tmp_path):
    from tunewright.edge.export import quantize_export

    class Keeps:
        def supports(self, exported):
            return True

        def quantize(self, exported, out_dir, calibration):
            return exported.moved(exported.folder, quantization={"name": "none"})

    exported = base_with_two_adapters(tmp_path / "export")
    exporter = ListsWhatChanged()
    candidate = quantize_export(Keeps(), "none", exported, tmp_path / "q", [], exporter)
    assert candidate.quantization == {"name": "none"} and exporter.calls == 0
    assert set(candidate.layout()) == {
        "tokenizer-extra.txt",
        "model.onnx",
        "a.onnx_adapter",
        "b.onnx_adapter",
    }


def test_a_quantizer_no_part_takes_is_refused_with_each_part_s_reason(tmp_path):
    from tunewright.edge.export import _refusal, _supports

    class Refuses:
        def supports(self, exported):
            return False

        def refusal(self, exported):
            return f"not for a {exported.task_kind}"

    exported = base_with_two_adapters(tmp_path / "export")
    assert not _supports(Refuses(), exported)
    assert _refusal(Refuses(), exported) == (
        "base: not for a causal_lm; adapter-a: not for a adapter; adapter-b: not for a adapter"
    )


def test_two_files_of_the_same_name_cannot_share_a_bundle(tmp_path):
    shared = folder_with(tmp_path, "shared", {"model.onnx": "x"})
    part = ExportedModel(folder_with(tmp_path, "part", {"model.onnx": "y"}), "causal_lm")
    with pytest.raises(ValueError, match="two exported files would be 'model.onnx' in the bundle"):
        ExportedModel(shared, "causal_lm", parts={"decoder": part}).layout()


def test_an_exporter_that_carries_the_whole_path_is_still_handed_it_with_a_deprecation_warning(
    tmp_path,
):
    from tunewright import get_plugin_manager, hookimpl
    from tunewright.edge import export_bundle

    class WholePath:
        description, preference = "the old contract", 99

        def supports(self, model, task_kind):
            return True

        def export(self, model, preprocessor, task_kind, out_dir):
            raise AssertionError("the whole path was to be handed over")

        def export_bundle(self, model, preprocessor, task, examples, out, **options):
            return ("handed", out, options["quantize"])

    class Plugin:
        @hookimpl
        def register_exporters(self, register):
            register("whole-path", WholePath())

    pm = get_plugin_manager(plugins=[("whole-path", Plugin())])
    with pytest.warns(DeprecationWarning, match="'whole-path' carries the whole export itself"):
        result = export_bundle(
            object(),
            None,
            "classification",
            [{"text": "a", "label": "x"}],
            tmp_path / "b",
            exporter="whole-path",
            quantize="none",
            pm=pm,
            log=lambda line: None,
        )
    assert result == ("handed", tmp_path / "b", "none")
