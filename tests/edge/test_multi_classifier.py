"""``tunewright export RUN_A RUN_B --out BUNDLE`` for classifiers: two LoRA text-classification
runs of one tiny BERT, with their own heads and label names, as one base and two adapters; each
adapter answers as its own run, in Python and over the Open Inference Protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

TUNEWRIGHT = [sys.executable, "-m", "tunewright"]
#: each run names its labels its own way; beta learns the keyword the other way round, with
#: another alpha (the graph multiplies B by alpha's scaling: the adapter file rescales beta's)
RUNS = {"alpha": (("no", "yes"), 8), "beta": (("on", "off"), 16)}
WORDS = ["film", "plot", "actors", "slow", "fun", "dull", "great", "story"]
TEXTS = ["film plot xylo", "dull slow story", "great xylo fun actors", "plot"]


@pytest.fixture(scope="module")
def two_classifier_runs(tmp_path_factory, tiny_bert_dir):
    """Two classification runs of the tiny BERT (LoRA r 4, head trained in full), side by side."""
    import random

    work = tmp_path_factory.mktemp("multi-classifier")
    rng = random.Random(0)
    trainers = []
    for name, (labels, alpha) in RUNS.items():
        with open(work / f"train_{name}.jsonl", "w") as handle:
            for i in range(48):
                keyword = i % 2 == 0
                text = " ".join(rng.choice(WORDS) for _ in range(4)) + (" xylo" if keyword else "")
                handle.write(json.dumps({"text": text, "label": labels[int(keyword)]}) + "\n")
        (work / f"{name}.yaml").write_text(f"""model: {tiny_bert_dir}
task: classification
method: lora
lora: {{r: 4, alpha: {alpha}}}
data:
  train: train_{name}.jsonl
  validation: 0.25
training: {{epochs: 1, max_steps: 6, batch_size: 8, learning_rate: 1.0e-2}}
output: runs/{name}
""")
        trainers.append(
            subprocess.Popen(
                [*TUNEWRIGHT, "train", f"{name}.yaml"],
                cwd=work,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for trainer in trainers:
        _, err = trainer.communicate(timeout=600)
        assert trainer.returncode == 0, err[-3000:]
    return work


@pytest.fixture(scope="module")
def classifier_multi_bundle(two_classifier_runs):
    done = subprocess.run(
        [*TUNEWRIGHT, "export", "runs/alpha", "runs/beta", "--out", "bundle", "--no-bench"],
        cwd=two_classifier_runs,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return two_classifier_runs / "bundle"


@pytest.mark.slow
def test_each_classifier_adapter_answers_as_its_own_run(
    classifier_multi_bundle, two_classifier_runs
):
    import torch

    from tunewright import load_run
    from tunewright.edge.runtime import BundleError, load_bundle

    manifest = json.loads((classifier_multi_bundle / "manifest.json").read_text())
    assert manifest["task_kind"] == "sequence_classification"
    assert manifest["quantization"]["name"] == "int8-dynamic"
    # the Gemms fed by adapter weights stay float: 13 adapted layers x (A, B) + the head
    assert manifest["quantization"]["float_nodes_with_overridable_weights"] == 27
    assert manifest["model"]["lora_inputs"] == 26 and len(manifest["model"]["head_inputs"]) == 2
    assert manifest["labels"] == ["no", "yes"]  # the graph's defaults carry alpha's head
    for name, (labels, alpha) in RUNS.items():
        entry = manifest["adapters"][name]
        assert entry["labels"] == sorted(labels)  # the task sorts label names
        assert entry["run"]["lora"]["alpha"] == alpha
        assert entry["run"]["lora"]["modules_to_save"] == ["classifier", "score"]
        assert (
            entry["parity"]["passed"] and entry["parity"]["bundle_vs_tuned"]["top1_agreement"] == 1
        )

    bundle = load_bundle(classifier_multi_bundle)
    assert bundle.adapter_names == sorted(RUNS)
    logits = {}
    for name in RUNS:
        run = load_run(two_classifier_runs / "runs" / name)
        encoded = run.tokenizer(TEXTS, padding=True, return_tensors="pt")
        with torch.no_grad():
            expected = torch.softmax(run.model(**encoded).logits, -1).numpy()
        ours = bundle.predict(TEXTS, adapter=name)
        assert [r["label"] for r in ours] == [run.labels[i] for i in expected.argmax(-1)]
        probabilities = np.array([[r["scores"][label] for label in run.labels] for r in ours])
        np.testing.assert_allclose(probabilities, expected, atol=0.01)
        assert bundle.for_adapter(name).predict(TEXTS) == ours
        assert bundle.run(TEXTS, adapter=name) == ours
        logits[name] = bundle.logits(bundle.encode(TEXTS), adapter=name)
    # two models, not one: their outputs differ well beyond int8 noise
    assert np.abs(logits["alpha"] - logits["beta"]).max() > 0.05
    with pytest.raises(
        BundleError, match="unknown adapter 'gamma'; this bundle carries alpha, beta"
    ):
        bundle.predict(TEXTS, adapter="gamma")
    verify = subprocess.run(
        [*TUNEWRIGHT, "edge", "verify", str(classifier_multi_bundle)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert set(json.loads(verify.stdout)["adapters"]) == set(RUNS)


@pytest.mark.slow
def test_served_classifier_adapters_are_models_of_their_own(classifier_multi_bundle):
    import httpx
    import tritonclient.http as triton
    from tritonclient.utils import InferenceServerException

    from tunewright.edge.runtime import load_bundle

    proc = subprocess.Popen(
        [
            *[sys.executable, "-m", "tunewright.edge.runtime", "serve"],
            f"base={classifier_multi_bundle}",
            *["--port", "0", "--threads", "1", "--batch-window-ms", "50"],
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()[-3000:]
        url = json.loads(line)["serving"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        client = triton.InferenceServerClient(url.removeprefix("http://"))
        bundle = load_bundle(classifier_multi_bundle)
        for model in ("alpha", "beta"):
            assert client.is_model_ready(model)
            meta = client.get_model_metadata(model)
            assert meta["parameters"]["labels"] == bundle.labels_for(model)
            assert meta["parameters"]["adapter"] == model and meta["parameters"]["base"] == "base"
            given = triton.InferInput("text", [len(TEXTS)], "BYTES")
            given.set_data_from_numpy(np.array([t.encode() for t in TEXTS], dtype=object), False)
            result = client.infer(
                model,
                [given],
                outputs=[
                    triton.InferRequestedOutput("label", binary_data=False),
                    triton.InferRequestedOutput("probabilities", binary_data=False),
                ],
            )
            expected = bundle.predict(TEXTS, adapter=model)
            labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
            assert labels == [e["label"] for e in expected]
            assert set(labels) <= set(bundle.labels_for(model))
            assert result.get_response()["parameters"]["labels"] == bundle.labels_for(model)
            np.testing.assert_allclose(
                result.as_numpy("probabilities"),
                [[e["scores"][label] for label in bundle.labels_for(model)] for e in expected],
                atol=1e-5,
            )
        # requests to two adapters at once: each batched with its own adapter's only
        import threading

        answers: dict[str, list] = {}

        def ask(model: str) -> None:
            body = {
                "inputs": [
                    {"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES", "data": TEXTS}
                ]
            }
            answers[model] = httpx.post(
                f"{url}/v2/models/{model}/infer", json=body, timeout=30
            ).json()["outputs"][0]["data"]

        threads = [threading.Thread(target=ask, args=(m,)) for m in ("alpha", "beta", "base")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        for model, adapter in (("alpha", "alpha"), ("beta", "beta"), ("base", None)):
            assert answers[model] == [e["label"] for e in bundle.predict(TEXTS, adapter=adapter)]
        with pytest.raises(
            InferenceServerException, match="unknown model 'gamma'; known: alpha, base, beta"
        ):
            client.get_model_metadata("gamma")
        missing = httpx.post(f"{url}/v2/models/gamma/infer", json={"inputs": []}, timeout=10)
        assert missing.status_code == 404 and missing.json()["known"] == ["alpha", "base", "beta"]
        metrics = httpx.get(url + "/metrics", timeout=10).text
        for model in ("alpha", "beta"):
            assert (
                f'tunewright_serve_classified_items_total{{model="{model}"}} {2 * len(TEXTS)}.0'
                in metrics
            )
            assert f'tunewright_serve_batches_total{{model="{model}"}}' in metrics
    finally:
        proc.kill()
        proc.wait(10)


# ---------------------------------------------------------------------------------------------
# classifier runs that cannot share a bundle: exit 2 before any model loads, nothing at --out
# ---------------------------------------------------------------------------------------------


def _fake_run(folder, name: str, *, model="base-model", task="classification", labels=("a", "b")):
    """A run folder as far as the pre-flight checks read it (no weights: nothing loads)."""
    run = folder / name
    (run / "adapter").mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {model}\ntask: {task}\nmethod: lora\n")
    config = {
        "peft_type": "LORA",
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["query", "value"],
        "bias": "none",
        "use_dora": False,
        "modules_to_save": ["classifier", "score"] if task != "chat" else None,
    }
    (run / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    if labels:
        (run / "labels.json").write_text(json.dumps(list(labels)))
    return run


@pytest.mark.parametrize(
    ("second", "says"),
    [
        (
            {"labels": ("a", "b", "c")},
            "the number of labels is 3, but",
        ),
        (
            {"task": "chat", "labels": None},
            "task 'chat' (causal_lm) cannot share a bundle with",
        ),
        ({"model": "another-model"}, "the base model is 'another-model'"),
        ({"task": "image-classification"}, "task 'image-classification' (image_classification)"),
    ],
    ids=["num-labels", "chat-and-classifier", "base", "text-and-image"],
)
def test_classifier_runs_that_cannot_share_a_bundle_exit_2(tmp_path, capsys, second, says):
    from tunewright.cli import main

    first = _fake_run(tmp_path, "one")
    other = _fake_run(tmp_path, "two", **second)
    with pytest.raises(SystemExit) as exit_info:
        main(["export", str(first), str(other), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert says in err and str(other) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_label_names_may_differ_and_fp16_is_refused(tmp_path, capsys):
    from tunewright.cli import main

    first = _fake_run(tmp_path, "one", labels=("neg", "pos"))
    other = _fake_run(tmp_path, "two", labels=("off", "on"))
    with pytest.raises(SystemExit) as exit_info:
        main(
            ["export", str(first), str(other), "--out", str(tmp_path / "out"), "--quantize", "fp16"]
        )
    err = capsys.readouterr().err
    assert exit_info.value.code == 2, err
    assert "--quantize: 'fp16' cannot quantize a bundle of several classifier adapters" in err
    assert not (tmp_path / "out").exists()
