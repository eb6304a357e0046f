"""Bundles that were changed or come from a newer format, failed parity gates, unknown names."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest


@pytest.fixture
def bundle_copy(classifier_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(classifier_bundle, target)
    return target


def test_changed_model_file_is_refused(bundle_copy):
    from tunewright.edge.runtime import BundleError, load_bundle

    data = bytearray((bundle_copy / "model.onnx").read_bytes())
    data[-10] ^= 0xFF
    (bundle_copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model.onnx: sha256 differs from the manifest"):
        load_bundle(bundle_copy)


def test_edited_manifest_and_added_file_are_refused(bundle_copy):
    from tunewright.edge.runtime import BundleError, load_bundle

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["labels"] = ["pos", "neg"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    (bundle_copy / "extra.onnx").write_bytes(b"x")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle_copy)
    assert "manifest.json: its content does not match its recorded hash" in str(info.value)
    assert "extra.onnx: not listed in the manifest" in str(info.value)


def test_newer_format_version_is_refused(bundle_copy):
    from tunewright.edge.runtime import BundleError, load_bundle

    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BundleError, match=r"bundle format version 99 is newer than this runtime reads \(up to 1\)"
    ):
        load_bundle(bundle_copy)


def test_device_command_line_exit_codes(bundle_copy):
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "tunewright.edge.runtime", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ok = run("run", str(bundle_copy), "good film")
    assert ok.returncode == 0, ok.stderr
    from tunewright.edge.runtime import load_bundle

    [device], [here] = json.loads(ok.stdout), load_bundle(bundle_copy).predict(["good film"])
    assert device["label"] == here["label"] and device["score"] == pytest.approx(
        here["score"], abs=1e-5
    )
    assert run("verify", str(bundle_copy)).returncode == 0
    (bundle_copy / "tokenizer.json").write_text("{}")
    refused = run("verify", str(bundle_copy))
    assert refused.returncode == 2
    assert "tokenizer.json" in refused.stderr and "refusing a changed bundle" in refused.stderr


def test_tunewright_edge_commands(classifier_bundle, bundle_copy):
    from click.testing import CliRunner

    from tunewright.cli import build_cli, main

    runner = CliRunner()
    cli = build_cli()
    result = runner.invoke(
        cli, ["edge", "bench", str(classifier_bundle), "--runs", "5", "--tokens", "12"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    assert (figures["runs"], figures["tokens"], figures["batch"]) == (5, 12, 1)
    assert figures["min_ms"] <= figures["p50_ms"] <= figures["p95_ms"]
    assert figures["size_mb"] == pytest.approx(
        sum(p.stat().st_size for p in classifier_bundle.iterdir()) / 2**20
    )
    (bundle_copy / "model.onnx").write_bytes(b"broken")
    with pytest.raises(SystemExit) as exit_info:
        main(["edge", "verify", str(bundle_copy)])
    assert exit_info.value.code == 2


class _Wrecker:
    """A quantizer plugin that ruins the model: the parity gate must stop it."""

    description = "negates the logits: every prediction flips, whatever the weights are"
    auto_candidate = False

    def supports(self, exported):
        return exported.runtime == "onnxruntime"

    def quantize(self, exported, out_dir, calibration):
        import onnx

        model = onnx.load(str(exported.path))
        output = model.graph.output[0].name
        for node in model.graph.node:
            node.output[:] = [
                f"{name}_before_wreck" if name == output else name for name in node.output
            ]
        model.graph.node.append(onnx.helper.make_node("Neg", [f"{output}_before_wreck"], [output]))
        out_dir.mkdir(parents=True)
        onnx.save(model, str(out_dir / exported.model_file))
        return exported.moved(out_dir, quantization={"name": "wreck"})


def test_failed_parity_gate_leaves_no_bundle(
    tmp_path, tiny_classifier, classification_examples, classifier_bundle
):
    from tunewright import JobFailed, get_plugin_manager, hookimpl
    from tunewright.edge import export_bundle

    class Plugin:
        @hookimpl
        def register_quantizers(self, register):
            register("wreck", _Wrecker())

    pm = get_plugin_manager(plugins=[("wrecker", Plugin())])
    model, tokenizer = tiny_classifier
    # a classifier whose metric depends on its weights: labels are what the tuned model predicts
    import torch

    with torch.inference_mode():
        predicted = (
            model(
                **tokenizer(
                    [e["text"] for e in classification_examples], padding=True, return_tensors="pt"
                )
            )
            .logits.argmax(-1)
            .tolist()
        )
    examples = [
        {"text": e["text"], "label": ["neg", "pos"][p]}
        for e, p in zip(classification_examples, predicted)
    ]
    out = tmp_path / "bundle"
    with pytest.raises(JobFailed) as info:
        export_bundle(
            model,
            tokenizer,
            "classification",
            examples,
            out,
            quantize="wreck",
            labels=["neg", "pos"],
            pm=pm,
            bench=False,
            log=lambda m: None,
        )
    message = str(info.value)
    assert "parity gate failed" in message and "no bundle written" in message
    assert (
        "accuracy (higher is better): tuned 1.0000, bundle " in message
        and "allowed 1.00" in message
    )
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == []  # no temporary folder left either
    # --overwrite of an existing bundle: a failed gate leaves the old bundle as it was
    shutil.copytree(classifier_bundle, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    said = []
    with pytest.raises(JobFailed):  # on 12 examples: the gate says how little it can tell
        export_bundle(
            model,
            tokenizer,
            "classification",
            examples[:12],
            out,
            quantize="wreck",
            overwrite=True,
            labels=["neg", "pos"],
            pm=pm,
            bench=False,
            log=said.append,
        )
    assert "WARNING: the parity gate rests on 12 held-out examples (fewer than 20)" in "\n".join(
        said
    )
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_unknown_quantizer_lists_the_registered_ones(
    tmp_path, tiny_classifier, classification_examples, edge_pm
):
    from tunewright import ConfigError
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_classifier
    with pytest.raises(ConfigError) as info:
        export_bundle(
            model,
            tokenizer,
            "classification",
            classification_examples,
            tmp_path / "b",
            quantize="int3",
            pm=edge_pm,
            log=lambda m: None,
        )
    message = str(info.value)
    assert "--quantize: unknown quantizer 'int3'" in message
    for name in (
        "none",
        "fp16",
        "int8",
        "int4",
        "int8-dynamic",
        "int8-static",
        "int8-block",
        "int4-block",
        "auto",
    ):
        assert name in message
    assert not (tmp_path / "b").exists()


def test_unknown_exporter_and_unexportable_task(
    tmp_path, tiny_classifier, classification_examples, edge_pm
):
    from tunewright import ConfigError, UsageError
    from tunewright.edge import export_bundle

    model, tokenizer = tiny_classifier
    with pytest.raises(
        ConfigError,
        match="unknown exporter 'tflite'.*registered: genai, image-text, optimum, torch",
    ):
        export_bundle(
            model,
            tokenizer,
            "classification",
            classification_examples,
            tmp_path / "b",
            exporter="tflite",
            pm=edge_pm,
            log=lambda m: None,
        )
    tagger = type("Tagger", (), {"model_kind": "token_classification"})()
    with pytest.raises(
        UsageError,
        match="no registered exporter can export a BertForSequenceClassification for "
        "task kind 'token_classification' \\(registered: genai, image-text, optimum, torch\\)",
    ):
        export_bundle(
            model,
            tokenizer,
            tagger,
            classification_examples,
            tmp_path / "b",
            pm=edge_pm,
            log=lambda m: None,
        )
    assert not (tmp_path / "b").exists()


def _resign_files(folder) -> None:
    """Record every file's new hash in the manifest, and the manifest's own: what a forger who
    knows the format would do, so that only verify's rerun can tell."""
    from tunewright.edge.runtime.bundle import manifest_digest, sha256_file

    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"] = {
        name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
        for name in manifest["files"]
    }
    manifest["manifest_sha256"] = manifest_digest(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_verify_catches_a_resigned_bundle_that_computes_something_else(bundle_copy):
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from tunewright.cli import main
    from tunewright.edge.runtime import load_bundle, verify_bundle

    model = onnx.load(str(bundle_copy / "model.onnx"))
    # the head's bias moved by 0.5: a model that still runs and predicts, but not what was proven
    bias = next(t for t in model.graph.initializer if t.name == "classifier.bias")
    bias.CopyFrom(
        numpy_helper.from_array(numpy_helper.to_array(bias) + np.float32([0.5, 0.0]), bias.name)
    )
    onnx.save(model, str(bundle_copy / "model.onnx"))
    _resign_files(bundle_copy)
    load_bundle(bundle_copy)  # the hashes agree: it opens
    report = verify_bundle(bundle_copy)
    assert not report["ok"]
    assert any(problem.startswith("max abs logit difference is") for problem in report["problems"])
    assert report["rerun"]["max_abs_diff"] == pytest.approx(0.5, abs=0.01)
    with pytest.raises(SystemExit) as exit_info:
        main(["edge", "verify", str(bundle_copy)])
    assert exit_info.value.code == 1
