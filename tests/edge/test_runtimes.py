"""The predictor protocol and the ``edge_runtimes`` registry (``register_edge_runtimes``)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest


def resign(folder, **changes) -> None:
    """Change manifest fields and record the manifest's new hash, as an exporter would have."""
    from tunewright.edge.runtime.bundle import manifest_digest

    path = folder / "manifest.json"
    manifest = {**json.loads(path.read_text()), **changes}
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def test_builtin_runtimes_are_registered_by_the_builtin_plugins(edge_pm):
    entries = edge_pm.registries.edge_runtimes
    served = {name: (cls.runtime, cls.task_kind, cls.generates) for name, cls in entries.items()}
    assert served == {
        "text-classifier": ("onnxruntime", "sequence_classification", False),
        "image-classifier": ("onnxruntime", "image_classification", False),
        "generator": ("onnxruntime", "causal_lm", True),
        "genai-generator": ("onnxruntime-genai", "causal_lm", True),
        "image-text-generator": ("onnxruntime", "image_text_to_text", True),
    }
    owners = {name: edge_pm.registries.owner("edge_runtimes", name) for name in entries}
    # image+text bundles are opened by what the plugin that exports them registers
    assert owners.pop("image-text-generator") == "edge-image-text"
    assert set(owners.values()) == {"edge-runtimes"}
    for cls in entries.values():  # every method of the protocol is there
        missing = [
            m
            for m in ("logits", "teacher_forced_logits", "benchmark_inputs", "stream", "run")
            if not callable(getattr(cls, m, None))
        ]
        assert not missing, (cls, missing)


def test_the_device_side_knows_every_builtin_plugin_that_registers_a_runtime(edge_pm):
    """The look-up without a plugin manager loads only BUILTIN_RUNTIME_PLUGINS: they must be exactly
    the built-in plugins that implement register_edge_runtimes, or a bundle would open on a device
    with another predictor than in the full plugin manager, or not at all."""
    from tunewright.edge.runtime.registry import BUILTIN_RUNTIME_PLUGINS

    implementing = {
        name
        for name, info in edge_pm.infos.items()
        if info.builtin and "register_edge_runtimes" in info.hooks
    }
    assert implementing == set(BUILTIN_RUNTIME_PLUGINS)


def test_a_loaded_bundle_satisfies_the_protocol(classifier_bundle, generator_bundle):
    from tunewright.edge.runtime import Predictor, load_bundle

    classifier, generator = load_bundle(classifier_bundle), load_bundle(generator_bundle)
    assert isinstance(classifier, Predictor) and isinstance(generator, Predictor)
    inputs = classifier.benchmark_inputs(batch=2, tokens=9)
    assert inputs["input_ids"].shape == (2, 9)
    assert classifier.logits(inputs).shape == (2, 2)
    with pytest.raises(NotImplementedError):
        classifier.teacher_forced_logits([1, 2], [3])
    prompt = generator.benchmark_inputs(tokens=7)
    assert prompt["input_ids"].shape == (1, 7)
    full = generator.logits(prompt)  # (1, 7, V)
    forced = generator.teacher_forced_logits(
        prompt["input_ids"][0, :4].tolist(), prompt["input_ids"][0, 4:].tolist()
    )
    # the cache path and the full pass predict the same tokens at the same positions
    np.testing.assert_allclose(forced, full[0, 3:6], atol=2e-3)
    assert len(list(generator.stream(prompt, max_new_tokens=5, stop_at_eos=False))) == 5


def test_generator_logits_ignore_padding(generator_bundle):
    from tunewright.edge.runtime import load_bundle

    generator = load_bundle(generator_bundle)
    ids = generator.benchmark_inputs(tokens=6)["input_ids"][0]
    alone = generator.logits({"input_ids": ids[None, :4]})[0]
    padded = generator.logits(
        {
            "input_ids": np.stack([ids, np.r_[ids[:4], 0, 0]]),
            "attention_mask": np.asarray([[1] * 6, [1, 1, 1, 1, 0, 0]]),
        }
    )
    np.testing.assert_allclose(padded[1, :4], alone, atol=1e-4)
    assert not padded[1, 4:].any()


class EchoClassifier:
    """A third-party predictor for a kind no built-in serves: it scores the first token id."""

    runtime = "toy-runtime"
    task_kind = "toy_kind"
    generates = False

    def __init__(self, folder, manifest, *, threads=None):
        self.manifest, self.labels = manifest, manifest.get("labels")

    def logits(self, inputs):
        ids = np.asarray(inputs["input_ids"])
        return np.stack([ids[:, 0] % 2 == 0, ids[:, 0] % 2 == 1], axis=-1).astype(np.float32)

    def teacher_forced_logits(self, prompt, continuation):
        raise NotImplementedError

    def benchmark_inputs(self, *, batch=1, tokens=16):
        return {"input_ids": np.arange(batch * tokens).reshape(batch, tokens)}

    def stream(self, inputs, **options):
        raise NotImplementedError

    def run(self, inputs, **options):
        return [{"echo": text} for text in inputs]


def _plugin(*registrations):
    from tunewright import hookimpl

    class Plugin:
        @hookimpl
        def register_edge_runtimes(self, register):
            for name, cls in registrations:
                register(name, cls)

    return Plugin()


def test_hook_register_edge_runtimes_brings_a_runtime_for_a_new_kind(classifier_bundle, tmp_path):
    from tunewright import get_plugin_manager, hookimpl
    from tunewright.edge.runtime import BundleError, bench_bundle, load_bundle, verify_bundle

    class ToyPlugin:
        @hookimpl
        def register_edge_runtimes(self, register):
            register("echo", EchoClassifier)

    bundle = tmp_path / "toy"
    shutil.copytree(classifier_bundle, bundle)
    resign(bundle, runtime="toy-runtime", task_kind="toy_kind")
    with pytest.raises(
        BundleError,
        match=r"no edge runtime registered for runtime 'toy-runtime' and task kind "
        r"'toy_kind' \(registered: .*onnxruntime/causal_lm.*\)",
    ):
        load_bundle(bundle)
    pm = get_plugin_manager(plugins=[("toy", ToyPlugin())])
    assert (
        pm.registries.edge_runtimes["echo"] is EchoClassifier
        and pm.registries.owner("edge_runtimes", "echo") == "toy"
    )
    predictor = load_bundle(bundle, pm=pm)
    assert isinstance(predictor, EchoClassifier)
    assert predictor.run(["hi"]) == [{"echo": "hi"}]
    figures = bench_bundle(bundle, pm=pm, runs=3, tokens=5)
    assert (figures["kind"], figures["tokens"], figures["runs"]) == ("toy_kind", 5, 3)
    # verify reruns the recorded classifier inputs through the plugin's predictor: it computes
    # something else than the tuned model, and verify says so
    report = verify_bundle(bundle, pm=pm)
    assert report["rerun"]["max_abs_diff"] > report["recorded"]["max_abs_diff"]
    assert not report["ok"] and any(
        "max abs logit difference" in problem for problem in report["problems"]
    )


def test_a_plugin_runtime_wins_over_a_builtin_and_two_plugins_are_an_error(classifier_bundle):
    from tunewright import get_plugin_manager
    from tunewright.edge.runtime import BundleError, find_predictor

    class FasterTextClassifier(EchoClassifier):
        runtime, task_kind = "onnxruntime", "sequence_classification"

    class Other(FasterTextClassifier):
        pass

    pm = get_plugin_manager(plugins=[("fast", _plugin(("fast-text", FasterTextClassifier)))])
    assert find_predictor("onnxruntime", "sequence_classification", pm=pm) is FasterTextClassifier
    assert find_predictor("onnxruntime", "causal_lm", pm=pm).__name__ == "Generator"
    pm = get_plugin_manager(
        plugins=[
            ("fast", _plugin(("fast-text", FasterTextClassifier))),
            ("other", _plugin(("other-text", Other))),
        ]
    )
    with pytest.raises(
        BundleError,
        match=r"several edge runtimes serve runtime 'onnxruntime' and task kind "
        r"'sequence_classification': 'fast-text' \(fast\), 'other-text' \(other\)",
    ):
        find_predictor("onnxruntime", "sequence_classification", pm=pm)


def test_a_builtin_bundle_opens_without_importing_the_other_plugins(classifier_bundle):
    from tunewright.edge.runtime.registry import _runtime_plugin_manager

    if _runtime_plugin_manager() is None:
        pytest.skip("a third-party tunewright plugin is installed: the plugin manager decides then")
    code = (
        "import sys; from tunewright.edge.runtime import find_predictor, load_bundle; "
        f"p = load_bundle({str(classifier_bundle)!r}); p.predict(['good film']); "
        "image_text = find_predictor('onnxruntime', 'image_text_to_text').__name__; "
        "print(image_text, sorted(m for m in ('torch', 'transformers', 'tunewright.plugins.tasks', "
        "'tunewright.plugins.vision.image_text') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ImageTextGenerator []"


@pytest.mark.parametrize(
    "args",
    [
        ["edge", "verify"],
        ["edge", "run", "{bundle}", "good film"],
        ["edge", "bench", "{bundle}", "--runs", "2"],
    ],
)
def test_an_edge_command_builds_one_plugin_manager(classifier_bundle, monkeypatch, capsys, args):
    """The command line's manager opens the bundle: none is built behind it to find the runtime."""
    from tunewright import manager
    from tunewright.cli import main

    made = []
    original = manager.PluginManager.__init__

    def counting(self, *a, **k):
        made.append(self)
        original(self, *a, **k)

    monkeypatch.setattr(manager.PluginManager, "__init__", counting)
    args = [str(classifier_bundle) if a == "{bundle}" else a for a in args]
    if len(args) == 2:
        args.append(str(classifier_bundle))
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 0, capsys.readouterr().err
    assert len(made) == 1, f"{' '.join(args[:2])} built {len(made)} plugin managers"
