"""A whole job through the engine: ``mobilenet-v2`` tuned on real digit files (a folder per class,
read by the built-in ``image-folder`` format, checked by ``tunewright.vision``) beats its untrained
head, leaves a run directory that reloads, and exports to a bundle the runtime runs on files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tunewright import get_plugin_manager, load_config, load_run, run_job

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture()
def digit_files(tmp_path, mnist_digits) -> Path:
    """120 digits 0-3 written as PNG, JPEG and WEBP files, a folder per class."""
    images, labels = mnist_digits
    folder = tmp_path / "digits"
    chosen = [(image, label) for image, label in zip(images, labels) if label < 4][:120]
    for i, (image, label) in enumerate(chosen):
        suffix = ("png", "jpg", "webp")[i % 3]
        path = folder / str(label) / f"{i}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(
            path,
            **(
                {"quality": 95}
                if suffix == "jpg"
                else {"lossless": True}
                if suffix == "webp"
                else {}
            ),
        )
    return folder


@pytest.mark.slow
def test_mobilenet_job_beats_its_untrained_head_and_exports(digit_files, tmp_path, monkeypatch):
    from tunewright.edge import export_run
    from tunewright.edge.runtime import load_bundle

    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    pm = get_plugin_manager()
    out = tmp_path / "run"
    raw = {
        "model": "mobilenet-v2",
        "task": "image-classification",
        "method": "freeze",
        "freeze": {"train_top_layers": 0},  # the last 1x1 convolution and the head: quick on a CPU
        "data": {"train": str(digit_files), "validation": 0.25},
        "training": {
            "epochs": 3,
            "batch_size": 15,
            "learning_rate": 1e-3,
            "precision": "fp32",
            "logging_steps": 3,
        },
        "output": str(out),
        "seed": 7,
    }
    run_job(load_config(raw, pm.registries), pm, echo=lambda message: None)

    results = json.loads((out / "eval.json").read_text())
    assert results["primary_metric"] == "accuracy"
    assert results["baseline"]["accuracy"] <= 0.5  # a fresh head over four classes guesses
    assert results["final"]["accuracy"] >= results["baseline"]["accuracy"] + 0.3, results
    assert json.loads((out / "labels.json").read_text()) == ["0", "1", "2", "3"]
    assert (out / "tokenizer" / "preprocessor_config.json").is_file()  # the image processor travels

    run = load_run(out, pm=pm)
    features = [run.task.tokenize(e, run.tokenizer, run.labels) for e in run.validation]
    batches = [
        run.task.collate(features[i : i + 15], run.tokenizer) for i in range(0, len(features), 15)
    ]
    assert run.task.metrics(run.model, batches)["accuracy"] == pytest.approx(
        results["final"]["accuracy"]
    )

    bundle = tmp_path / "bundle"
    result = export_run(out, bundle, quantize="none", bench=False, pm=pm, log=lambda message: None)
    assert result.parity.passed and result.manifest["parity"]["drop_points"] == pytest.approx(0.0)
    predictor = load_bundle(bundle)
    files = [e["image_source"]["root"] + "/" + e["image"] for e in run.validation]
    predicted = [p["label"] for p in predictor.predict(files)]
    expected = [
        run.labels[i]
        for i in torch.cat(
            [run.model(pixel_values=b["pixel_values"]).logits.argmax(-1) for b in batches]
        ).tolist()
    ]
    assert predicted == expected

    # int8 is a bit width: for a CNN, static per-channel QDQ on the convolutions (dynamic int8 would
    # leave them in fp32), its activation ranges calibrated on the run's training images
    from tunewright import UsageError

    int8 = export_run(
        out, tmp_path / "int8", quantize="int8", bench=False, pm=pm, log=lambda message: None
    )
    quantization = int8.manifest["quantization"]
    assert (quantization["requested"], quantization["name"]) == ("int8", "int8-static")
    assert quantization["calibration"] == "training" and quantization["calibration_examples"] == 64
    assert int8.parity.passed
    import onnx

    graph = onnx.load(str(tmp_path / "int8" / "model.onnx")).graph
    weights = {i.name: i for i in graph.initializer}
    quantized_convs = [
        n
        for n in graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in weights
        and weights[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(weights[n.input[0]].dims) == 4
    ]
    assert len(quantized_convs) == sum(
        n.op_type == "Conv" for n in graph.node
    )  # every convolution's weights
    # 4 bits: no faithful scheme for a CNN; the refusal says why and what applies, and writes nothing
    with pytest.raises(
        UsageError, match="'int4' does not apply.*convolutions in fp32; use int8 \\(int8-static"
    ):
        export_run(
            out, tmp_path / "int4", quantize="int4", bench=False, pm=pm, log=lambda message: None
        )
    assert not (tmp_path / "int4").exists()
