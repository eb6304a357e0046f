"""Image+text bundles: exported, proven and written by the one ``export_bundle`` (the image-text
plugin's exporter hands it three files); the views training cut are recorded and cut again on the
device, and ``edge run`` / ``edge bench`` take images."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tunewright.vision import VisionSettings, prepare_example

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

JOB = VisionSettings(
    detail="low"
)  # the job's vision.detail: every image one view, whatever it asks


def colour_examples(folder: Path) -> list[dict]:
    """Held-out chat examples: solid colour squares, asked at high detail, prepared as the engine
    prepares them for a job whose ``vision.detail`` is low."""
    folder.mkdir(parents=True, exist_ok=True)
    examples = []
    for name, rgb in (("red", (220, 30, 30)), ("green", (30, 190, 30)), ("blue", (30, 30, 220))):
        Image.new("RGB", (40, 40), rgb).save(folder / f"{name}.png")
        raw = {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image_url",
                            "image_url": {"url": f"{name}.png", "detail": "high"},
                        },
                        {"type": "text", "text": "What colour is this?"},
                    ],
                },
                {"role": "assistant", "content": name},
            ]
        }
        examples.append(prepare_example(raw, JOB, root=folder))
    return examples


@pytest.fixture(scope="module")
def image_text_bundle(tiny_image_text_dir, tmp_path_factory):
    """An fp32 bundle of the tiny image-text model exported for a job with ``vision.detail: low``."""
    from tunewright import get_plugin_manager
    from tunewright.edge import export_bundle

    pm = get_plugin_manager()
    task = pm.registries.tasks["image-to-text"]
    processor = task.load_tokenizer(tiny_image_text_dir)
    model = task.load_model(tiny_image_text_dir, None, None, processor)
    root = tmp_path_factory.mktemp("image-text")
    examples = colour_examples(root / "data")
    bundle = root / "bundle"
    export_bundle(
        model,
        processor,
        task,
        examples,
        bundle,
        quantize="none",
        bench=False,
        config=JOB,
        pm=pm,
        log=lambda line: None,
    )
    return bundle, task, processor, examples


@pytest.fixture(scope="module")
def int8_image_text_bundle(tiny_image_text_dir, tmp_path_factory):
    """An int8 bundle of the tiny image-text model, benched, and the model it was exported from."""
    from tunewright import get_plugin_manager
    from tunewright.edge import export_bundle

    pm = get_plugin_manager()
    task = pm.registries.tasks["image-to-text"]
    processor = task.load_tokenizer(tiny_image_text_dir)
    model = task.load_model(tiny_image_text_dir, None, None, processor)
    root = tmp_path_factory.mktemp("image-text-int8")
    result = export_bundle(
        model,
        processor,
        task,
        colour_examples(root / "data"),
        root / "bundle",
        quantize="int8",
        config=JOB,
        pm=pm,
        log=lambda line: None,
    )
    return result, model


def named_files(section: dict) -> list[str]:
    """Every value of a manifest section that names a file of the bundle."""
    return [value for key, value in section.items() if key == "file" or key.endswith("_file")]


def test_an_image_text_bundle_goes_through_the_one_export_path(
    image_text_bundle, int8_image_text_bundle
):
    from tunewright.edge.runtime import verify_bundle

    result, model = int8_image_text_bundle
    manifest = result.manifest
    # the decoder was quantized, and the embedding table with it: both said, in one place each
    quantization = manifest["quantization"]
    assert (quantization["name"], quantization["requested"], quantization["applies_to"]) == (
        "int8-block",
        "int8",
        "decoder",
    )
    [table] = [t for t in quantization["embedding_tables"] if t.get("file")]
    assert table["file"] == manifest["model"]["embeddings_file"] == "embeddings-int8.npz"
    assert table["bits"] == 8 and manifest["model"]["embeddings_dtype"] == "int8-rows"
    # every file the manifest names is in the bundle, and no section names one that is not
    text = json.dumps({key: value for key, value in manifest.items() if key != "files"})
    assert "embeddings.npy" not in text
    for section in (manifest["model"], *quantization["embedding_tables"]):
        assert set(named_files(section)) <= set(manifest["files"])
    shipped = {"vision.onnx", "model.onnx", "embeddings-int8.npz", "tokenizer.json", "parity.npz"}
    assert shipped <= set(manifest["files"])
    with np.load(result.bundle / "embeddings-int8.npz") as data:
        weight, scale = data["weight"], data["scale"]
    embeddings = model.get_input_embeddings().weight.detach().numpy()
    assert (
        weight.dtype == np.int8
        and np.abs(weight * scale[:, None] - embeddings).max() <= scale.max() / 2 + 1e-6
    )
    # the decoder's inputs and outputs are described as every bundle's model is
    assert {i["name"] for i in manifest["model"]["inputs"]} >= {
        "inputs_embeds",
        "past_key_values.0.key",
    }
    # the one gate: the task's metric, fidelity through the cache
    parity = manifest["parity"]
    assert parity["passed"] and parity["metric"] == "mean_token_accuracy"
    assert (
        parity["bundle_vs_tuned"]["top1_agreement"] >= 0.9
        and 0 < parity["bundle_vs_tuned"]["kl_per_token"] < 0.05
    )
    # the bench of every bundle: the tuned PyTorch model timed on the same prompt beside it
    bench = manifest["benchmark"]
    assert (
        bench["kind"] == "image_text_to_text"
        and bench["views"] == 1
        and bench["tokens_per_second"] > 0
    )
    torch_side = bench["torch_fp32"]
    assert (
        torch_side["prompt_tokens"] == bench["prompt_tokens"]
        and torch_side["tokens_per_second"] > 0
    )
    assert bench["versus_torch"]["speed"] == pytest.approx(
        bench["tokens_per_second"] / torch_side["tokens_per_second"]
    )
    assert bench["versus_torch"]["size"] == pytest.approx(bench["size_mb"] / torch_side["size_mb"])
    assert verify_bundle(result.bundle)["ok"]

    # fp32: the embedding table as exported, named once, in the model section
    bundle = image_text_bundle[0]
    fp32 = json.loads((bundle / "manifest.json").read_text())
    assert fp32["quantization"]["name"] == "none"
    assert (fp32["model"]["embeddings_file"], fp32["model"]["embeddings_dtype"]) == (
        "embeddings.npy",
        "float32",
    )
    assert not any(key.endswith("_file") for key in fp32["exporter"])
    assert set(named_files(fp32["model"])) <= set(fp32["files"])
    assert verify_bundle(bundle)["ok"]


def big_photo(path: Path) -> Path:
    """A 1200 x 900 photo: at high detail an overview and tiles, at low detail one view."""
    from skimage import data

    Image.fromarray(data.astronaut()).resize((1200, 900)).save(path)
    return path


def resign(folder: Path, change) -> None:
    """Change the manifest and record its new hash, as an exporter would have."""
    from tunewright.edge.runtime.bundle import manifest_digest

    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    manifest["manifest_sha256"] = manifest_digest(manifest)
    path.write_text(json.dumps(manifest))


def test_the_bundle_cuts_views_as_the_job_did(image_text_bundle, tmp_path):
    from tunewright.edge.runtime import BundleError, load_bundle
    from tunewright.edge.runtime.image_text import geometry

    bundle, task, processor, _ = image_text_bundle
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["preprocessing"]["views"] == {**geometry(), "detail": "low"}
    photo = big_photo(tmp_path / "photo.png")
    asked_high = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": str(photo), "detail": "high"}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    predictor = load_bundle(bundle)
    ids, pixels = predictor.encode(asked_high)
    # the job's low detail wins over the part's high, as in training: one view, the task's pixels
    assert pixels.shape[0] == 1
    as_data = [
        {
            "role": "user",
            "content": [
                {"type": "image_url", "image_url": {"url": "photo.png", "detail": "high"}},
                {"type": "text", "text": "What is this?"},
            ],
        }
    ]
    example = prepare_example(
        {"messages": [*as_data, {"role": "assistant", "content": "x"}]}, JOB, root=tmp_path
    )
    batch = task.collate([task.tokenize(example, processor)], processor)
    np.testing.assert_allclose(pixels, batch["pixel_values"].numpy(), atol=1e-5)
    assert ids == task.prompt_of(batch, predictor_config(processor))[0].tolist()

    # a bundle of a job that left detail to each image cuts the overview and its tiles
    each_own = tmp_path / "each-own"
    shutil.copytree(bundle, each_own)
    resign(each_own, lambda m: m["preprocessing"]["views"].update(detail=None))
    _, tiled = load_bundle(each_own).encode(asked_high)
    assert tiled.shape[0] > 1
    # a bundle whose views this tunewright would cut otherwise is refused when it opens
    other = tmp_path / "other-geometry"
    shutil.copytree(bundle, other)
    resign(other, lambda m: m["preprocessing"]["views"].update(tile=256))
    with pytest.raises(BundleError, match="trained on views cut with tile 256 \\(here 512\\)"):
        load_bundle(other)


def predictor_config(processor):
    """What ``task.prompt_of`` reads of a model: its config's image token id."""
    from types import SimpleNamespace

    return SimpleNamespace(config=processor)


def test_edge_run_and_bench_show_the_prompt_an_image(
    image_text_bundle, classifier_bundle, tmp_path, capsys
):
    from tunewright.edge.runtime import load_bundle

    bundle, _, _, examples = image_text_bundle
    red = str(Path(examples[0]["image_source"]["root"]) / "red.png")
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "tunewright.edge.runtime", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    done = run("run", str(bundle), "What colour is this?", "--image", red, "--max-new-tokens", "4")
    assert done.returncode == 0, done.stderr
    [answer] = json.loads(done.stdout)
    expected = load_bundle(bundle).generate(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": red}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        max_new_tokens=4,
    )
    assert answer == {"prompt": "What colour is this?", "images": [red], "reply": expected}

    from click.testing import CliRunner

    from tunewright.cli import build_cli

    cli = build_cli()
    result = CliRunner().invoke(
        cli, ["edge", "bench", str(bundle), "--image", red, "--new-tokens", "6", "--runs", "1"]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads(result.output)
    predictor = load_bundle(bundle)
    prompt = predictor.benchmark_inputs(tokens=32, images=[red])
    # one view of the red square (low detail), its image tokens inside the timed prompt
    assert figures["views"] == 1 and figures["prompt_tokens"] == prompt["input_ids"].shape[1]
    assert (prompt["input_ids"] == predictor.image_token_id).sum() == predictor.tokens_per_view
    assert figures["new_tokens"] == 6 and figures["kind"] == "image_text_to_text"
    # a bundle that takes no images beside its inputs says so (exit 2)
    from tunewright.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["edge", "run", str(classifier_bundle), "good film", "--image", red])
    assert exit_info.value.code == 2
    assert (
        "--image: a sequence_classification bundle takes no images beside its inputs"
        in capsys.readouterr().err
    )
    missing = run("run", str(bundle), "What colour?", "--image", str(tmp_path / "nothing.png"))
    assert (
        missing.returncode == 2 and "cannot be read (No such file or directory)" in missing.stderr
    )
