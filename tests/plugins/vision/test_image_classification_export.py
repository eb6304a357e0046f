"""The tuned image classifier on the edge: one preprocessing definition, merged ONNX, int8, the
parity gate on held-out images, and the torch-free runtime."""

from __future__ import annotations

import json
import os
import subprocess
import venv
from pathlib import Path

import numpy as np
import pytest
import torch

from tunewright import JobFailed, UsageError, get_plugin_manager
from tunewright.edge.runtime.images import (
    UnsupportedProcessor,
    image_settings,
    open_rgb,
    pixel_values,
)

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

PM = get_plugin_manager()
TASK = PM.registries.tasks["image-classification"]
REPO = Path(__file__).resolve().parents[3]


def photo(name):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)())


@pytest.fixture(scope="module")
def image_files(tmp_path_factory, mnist_digits) -> list[Path]:
    """Real files of every shape the runtime meets: landscape and portrait photos, a grayscale
    digit, an RGBA PNG, a JPEG stored sideways with EXIF orientation 6, a WEBP."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    paths = []
    photo("chelsea").save(folder / "cat.jpg", quality=92)
    photo("coffee").rotate(90, expand=True).save(folder / "portrait.png")
    mnist_digits[0][0].save(folder / "digit.png")
    rgba = photo("coffee").convert("RGBA")
    rgba.putalpha(100)
    rgba.save(folder / "rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    photo("chelsea").rotate(90, expand=True).save(folder / "sideways.jpg", exif=exif, quality=95)
    photo("astronaut").resize((333, 517)).save(folder / "odd.webp", quality=90)
    for name in ("cat.jpg", "portrait.png", "digit.png", "rgba.png", "sideways.jpg", "odd.webp"):
        paths.append(folder / name)
    return paths


# -- one preprocessing definition -----------------------------------------------------------------


@pytest.mark.parametrize("model", ["mobilenet-v2", "tiny-vit"])
def test_runtime_preprocessing_equals_the_image_processor(
    model, mobilenet_v2_dir, tiny_vit_dir, image_files
):
    processor = TASK.load_tokenizer(mobilenet_v2_dir if model == "mobilenet-v2" else tiny_vit_dir)
    settings = image_settings(processor)
    ours = pixel_values(image_files, settings)  # numpy and Pillow only
    expected = processor(images=[open_rgb(p) for p in image_files], return_tensors="np")[
        "pixel_values"
    ]
    assert (
        ours.shape
        == expected.shape
        == (len(image_files), 3, settings["size"]["height"], settings["size"]["width"])
    )
    assert ours.dtype == np.float32
    np.testing.assert_array_equal(ours, expected)
    # and what the task trains on is the same again
    from tunewright.vision import prepare_example

    features = [
        TASK.tokenize(
            prepare_example({"image": p.name, "label": "x"}, root=p.parent), processor, ["x"]
        )
        for p in image_files
    ]
    np.testing.assert_array_equal(
        TASK.collate(features, processor)["pixel_values"].numpy(), expected
    )


def test_the_runtime_turns_exif_rotated_images_upright(mobilenet_v2_dir, image_files):
    settings = image_settings(TASK.load_tokenizer(mobilenet_v2_dir))
    sideways = [p for p in image_files if p.name == "sideways.jpg"]
    upright = pixel_values(sideways, settings)
    as_stored = pixel_values(sideways, settings, exif_transpose=False)
    assert not np.allclose(upright, as_stored)
    np.testing.assert_allclose(upright, pixel_values([open_rgb(sideways[0])], settings))


def test_processors_the_runtime_cannot_reproduce_are_refused():
    from transformers import ConvNextImageProcessor, ViTImageProcessor

    with pytest.raises(UnsupportedProcessor, match="crop_pct"):
        image_settings(ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875))
    with pytest.raises(UnsupportedProcessor, match="fixed output size"):
        image_settings(ViTImageProcessor(size={"shortest_edge": 224}))
    from tunewright.edge.preprocessing import image_preprocessing

    with pytest.raises(UsageError, match="export: .*crop_pct.*preprocess as training did"):
        image_preprocessing(ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=0.875))


# -- export: merged ONNX, int8, parity gate, runtime ---------------------------------------------


@pytest.fixture(scope="module")
def tuned_mobilenet(mobilenet_v2_dir, mnist_digits):
    """MobileNetV2 tuned on 100 real digits (0-4), merged; with 100 held-out digits. ``freeze``
    with no block trains the last 1x1 convolution and the head: no backward pass through the
    network, so the fixture takes seconds, not minutes, on a busy CPU (``lora`` exports through
    the same merged class; its merge is tested with the methods)."""
    from tunewright.plugins.methods.freeze import FreezeSettings

    images, labels = mnist_digits
    names = [str(d) for d in range(5)]
    examples = [
        {"image": image, "label": label} for image, label in zip(images, labels) if label < 5
    ]
    train, held_out = examples[:100], examples[100:200]
    processor = TASK.load_tokenizer(mobilenet_v2_dir)
    torch.manual_seed(0)
    method = PM.registries.methods["freeze"]
    model = method.apply(
        TASK.load_model(mobilenet_v2_dir, names, None),
        FreezeSettings(train_top_layers=0),
        "image_classification",
    )
    features = [TASK.tokenize(e, processor, names) for e in train]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _epoch in range(3):
        for i in range(0, len(features), 20):
            model.train()
            model(**TASK.collate(features[i : i + 20], processor)).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return method.merge(model).eval(), processor, names, held_out


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    raises=JobFailed,
    reason=(
        "known gap: this fixture's quickly tuned head (100 digits, freeze with no block: 95% held-out, low "
        "margins) loses 1-5 points under any 8-bit scheme: static per-channel QDQ (MinMax, Percentile, Entropy, "
        "head or first/last convolution in fp32 all tried), and even per-channel int8 weights with fp32 "
        "activations flip 4 of its 100 held-out digits; the gate refuses it. A model tuned by a job passes "
        "with --quantize int8 (test_image_classification_job.py); the lora-tuned model of "
        "bench/vision_bench.py passed on a Zen 4 CPU with VNNI and lost 1.56 points (refused) on an AVX2 "
        "EPYC without it, where onnxruntime's u8 x s8 kernels are less exact. Strict: a fix shows as XPASS"
    ),
)
def test_tuned_mobilenet_exports_to_int8_and_passes_the_parity_gate(
    tuned_mobilenet, tmp_path, image_files
):
    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import load_bundle, verify_bundle

    model, processor, names, held_out = tuned_mobilenet
    held_features = [TASK.tokenize(e, processor, names) for e in held_out]
    tuned = TASK.metrics(
        model, [TASK.collate(held_features[i : i + 25], processor) for i in range(0, 100, 25)]
    )
    assert tuned["accuracy"] >= 0.8, tuned  # it learnt the digits: the gate has something to keep

    result = export_bundle(
        model,
        processor,
        TASK,
        held_out,
        tmp_path / "bundle",
        quantize="int8-static",
        labels=names,
        info={"task": "image-classification"},
        pm=PM,
        log=lambda message: None,
    )
    manifest = result.manifest
    assert manifest["quantization"]["name"] == "int8-static"
    assert manifest["parity"]["passed"] and manifest["parity"]["drop_points"] <= 1.0
    assert manifest["parity"]["tuned"] == pytest.approx(tuned["accuracy"])
    assert manifest["preprocessing"]["crop"] == {"height": 224, "width": 224}
    model_file = tmp_path / "bundle" / manifest["model"]["file"]
    torch_mb = manifest["benchmark"]["torch_fp32"]["size_mb"]
    assert model_file.stat().st_size / 2**20 <= 0.35 * torch_mb  # int8 weights: about a quarter
    assert (tmp_path / "bundle" / "parity.npz").stat().st_size < 2.5 * 2**20
    assert verify_bundle(tmp_path / "bundle")["ok"]

    # the runtime, given files, predicts what the tuned PyTorch model predicts through the task
    bundle = load_bundle(tmp_path / "bundle")
    digits = held_out[:12]
    files = []
    for i, example in enumerate(digits):
        path = tmp_path / f"digit{i}.webp"
        example["image"].save(path, lossless=True)
        files.append(path)
    predictions = [p["label"] for p in bundle.predict(files)]
    from tunewright.vision import prepare_example

    batch = TASK.collate(
        [
            TASK.tokenize(
                prepare_example({"image": f.name, "label": "0"}, root=f.parent), processor, names
            )
            for f in files
        ],
        processor,
    )
    with torch.no_grad():
        expected = [
            names[i] for i in model(pixel_values=batch["pixel_values"]).logits.argmax(-1).tolist()
        ]
    assert sum(a == b for a, b in zip(predictions, expected)) >= len(files) - 1
    assert sum(p == str(e["label"]) for p, e in zip(predictions, digits)) >= 0.75 * len(files)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a tuned model exported, then a venv installed from the index
def test_image_bundle_runs_in_a_fresh_venv_without_torch(tuned_mobilenet, tmp_path, image_files):
    """A device: a venv without system packages, ``tunewright[runtime]`` only; predictions on real
    files equal those of the runtime in this process (which equal the tuned model's, above)."""
    from tunewright.edge import export_bundle
    from tunewright.edge.runtime import load_bundle

    model, processor, names, held_out = tuned_mobilenet
    export_bundle(
        model,
        processor,
        TASK,
        held_out[:40],
        tmp_path / "bundle",
        quantize="none",
        labels=names,
        bench=False,
        pm=PM,
        log=lambda message: None,
    )
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False, clear=True).create(env_dir)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            f"{REPO}[runtime]",
        ],
        check=True,
        env=env,
        timeout=900,
    )
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import importlib.util as u; print([m for m in ('torch', "
            "'transformers') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        timeout=120,
    )
    assert probe.stdout.strip() == "[]"
    files = [str(p) for p in image_files]
    run = subprocess.run(
        [str(python), "-m", "tunewright.edge.runtime", "run", str(tmp_path / "bundle"), *files],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    device = json.loads(run.stdout)
    here = load_bundle(tmp_path / "bundle").predict(files)
    assert [d["label"] for d in device] == [h["label"] for h in here]
    np.testing.assert_allclose([d["score"] for d in device], [h["score"] for h in here], atol=1e-4)
