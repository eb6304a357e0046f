"""The whole data path of an image job through the real engine, with a small image task written
here from tunewright.vision's public functions the way the vision tasks use them: read a folder per
class, check, screen, exclude, transform, tokenize into views, summarise."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from tunewright import Problem, get_plugin_manager, hookimpl, kinds
from tunewright.config import load_config
from tunewright.data import prepare_data
from tunewright.validate import validate_file
from tunewright.vision import (
    check_example,
    load_images,
    render_summary,
    summarize,
    view_pixels,
    views,
)
from tunewright.vision.demo import bad_images

skimage_data = pytest.importorskip("skimage.data")


class TinyImageTask:
    """Labels from ``label``; one 16 x 16 grey view per image; the vision checks as its rules."""

    model_kind = kinds.IMAGE_CLASSIFICATION
    primary_metric = "accuracy"
    metric_directions = {"loss": "min", "accuracy": "max"}
    description = "test-only image classification"

    def load_tokenizer(self, path, trust_remote_code=False):
        return {"size": 16}

    def load_model(self, path, labels, config, tokenizer=None):
        raise NotImplementedError

    def validate(self, example, location, config):
        problems = list(check_example(example, location, config))
        if "label" not in example:
            problems.append(Problem(location, "no label"))
        return problems

    def label_set(self, examples):
        return sorted({str(e["label"]) for e in examples})

    def stratify_key(self, example):
        return str(example["label"])

    def tokenize(self, example, tokenizer, labels=None):
        [item] = load_images(example)
        detail = item.detail()
        overview = views(item.image, detail)[0].convert("L").resize((tokenizer["size"],) * 2)
        return {
            "pixel_values": np.asarray(overview, dtype=np.float32) / 255.0,
            "labels": labels.index(str(example["label"])),
            "detail": detail,
            "pixels": view_pixels(item.checked.size, detail),
        }

    def num_tokens(self, features):
        return None

    def collate(self, features, tokenizer):
        return {"pixel_values": np.stack([f["pixel_values"] for f in features])}

    def metrics(self, model, batches):
        return {"loss": 0.0, "accuracy": 0.0}

    def summarize(self, examples, *, locations=None, problems=()):
        return {"images": summarize(examples, locations=locations, problems=problems)}

    def render_summary(self, summary):
        return render_summary(summary.get("images", {}))


class Plugin:
    @hookimpl
    def register_tasks(self, register):
        register("tiny-images", TinyImageTask())


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager(plugins=[("tiny-images", Plugin())])


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


@pytest.fixture
def data(tmp_path):
    """Twelve good images in two classes, a GIF, a truncated JPEG and a photo with a face."""
    train = tmp_path / "data" / "train"
    for label, shade in (("dark", 40), ("light", 220)):
        (train / label).mkdir(parents=True)
        for n in range(6):
            fmt = ("PNG", "JPEG", "WEBP")[n % 3]
            size = (28, 28) if n % 2 else (700, 500)  # small: auto is low; large: auto is high
            (train / label / f"{n}.{fmt.lower()}").write_bytes(
                encode(Image.new("L", size, shade + n), fmt)
            )
    bad = bad_images()
    (train / "dark" / "x.png").write_bytes(bad["gif-named.png"][0])
    (train / "light" / "y.jpg").write_bytes(bad["truncated.jpg"][0])
    (train / "light" / "z.jpg").write_bytes(
        encode(Image.fromarray(skimage_data.astronaut()), "JPEG")
    )
    return train


def job(pm, train, **vision):
    config = {
        "model": "m",
        "task": "tiny-images",
        "data": {"train": str(train), "validation": 0.25},
    }
    if vision:
        config["vision"] = vision
    return load_config(config, pm.registries)


def test_refused_images_cost_their_own_example_and_the_job_goes_on(pm, data):
    prepared = prepare_data(job(pm, data), pm, tokenizer={"size": 16})
    excluded = {p.message.split(":")[0]: p for p in prepared.problems if p.severity == "excluded"}
    assert set(excluded) == {
        "image 1 (dark/x.png)",
        "image 1 (light/y.jpg)",
        "image 1 (light/z.jpg)",
    }
    assert "GIF file" in excluded["image 1 (dark/x.png)"].message
    assert "truncated" in excluded["image 1 (light/y.jpg)"].message
    assert "excluded by face screening" in excluded["image 1 (light/z.jpg)"].message
    assert excluded["image 1 (dark/x.png)"].location == f"{data}:7"
    assert len(prepared.train) + len(prepared.validation) == 12
    kept = prepared.train.examples + prepared.validation.examples
    assert all(not e["image"].endswith(("x.png", "y.jpg", "z.jpg")) for e in kept)
    features = prepared.train.features
    assert all(f["pixel_values"].shape == (16, 16) for f in features)
    assert {f["detail"] for f in features} == {"low", "high"}
    assert prepared.labels == ["dark", "light"]
    images = prepared.summary["train"]["images"]
    assert images["refused"]["images"] == 0 and images["accepted"] == len(prepared.train)


def test_job_detail_reaches_tokenize(pm, data):
    prepared = prepare_data(job(pm, data, detail="low"), pm, tokenizer={"size": 16})
    assert {f["detail"] for f in prepared.train.features} == {"low"}
    high = prepare_data(job(pm, data, detail="high"), pm, tokenizer={"size": 16})
    low_pixels = sum(f["pixels"] for f in prepared.train.features)
    high_pixels = sum(f["pixels"] for f in high.train.features)
    assert high_pixels > 2 * low_pixels


def test_on_refused_error_stops_before_training(pm, data):
    from tunewright.data import DataProblems

    with pytest.raises(DataProblems) as caught:
        prepare_data(job(pm, data, on_refused="error"), pm, tokenizer={"size": 16})
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert len(errors) == 2  # the GIF and the truncated JPEG; screening only ever excludes
    assert any(p.severity == "excluded" and "face" in p.message for p in caught.value.problems)


def test_screening_off_keeps_the_face(pm, data):
    prepared = prepare_data(job(pm, data, screening=False), pm, tokenizer={"size": 16})
    assert not any("face" in p.message for p in prepared.problems)
    assert len(prepared.train) + len(prepared.validation) == 13


def test_validate_lists_refusals_and_summarises_images(pm, data):
    report = validate_file(data, "tiny-images", pm)
    text = report.render()
    assert "3 examples excluded:" in text
    assert f"{data}:7: excluded: image 1 (dark/x.png): the bytes are a GIF file" in text
    # the face the screening plugin excluded is refused in the summary too: what it counts as
    # reaching the model is what training gets
    assert "images: 15 in 15 examples, 12 accepted" in text
    assert "refused: 3 images in 3 examples (" in text
    for reason in (
        "not JPEG, PNG or WEBP 1",
        "corrupt or truncated 1",
        "excluded by content screening 1",
    ):
        assert reason in text
    assert "reaching the model:" in text and "at low detail" in text
    images = report.summary["images"]
    assert images["accepted"] == 12 and images["refused"]["reasons"]["screened"] == 1
    as_json = report.to_dict()
    assert len(as_json["excluded"]) == 3 and as_json["ok"]
    json.dumps(as_json)  # JSON-ready


def test_summary_of_refused_chat_images_gives_their_own_reasons(pm, tmp_path):
    """A refused example is not transformed (its folder is never attached): the summary still
    resolves its paths from the example's location and names the real reason."""
    folder = tmp_path / "chat"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(Image.new("RGB", (20, 20)), "PNG"))
    (folder / "b.png").write_bytes(bad_images()["gif-named.png"][0])
    path = folder / "train.jsonl"
    lines = [
        {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": name}}]},
                {"role": "assistant", "content": "black"},
            ],
            "label": "black",
        }
        for name in ("a.png", "b.png", "missing.png")
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    report = validate_file(path, "tiny-images", pm)
    images = report.summary["images"]
    assert images["accepted"] == 1
    assert images["refused"]["reasons"] == {"format": 1, "not-found": 1}


def test_chat_paths_resolve_in_validate_without_a_config(pm, tmp_path):
    """transform_example gets the example's location: no config is needed to find its folder."""
    folder = tmp_path / "chat"
    folder.mkdir()
    (folder / "a.png").write_bytes(encode(Image.new("RGB", (20, 20)), "PNG"))
    example = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "a.png"}}]},
            {"role": "assistant", "content": "black"},
        ],
        "label": "black",
    }
    path = folder / "train.jsonl"
    path.write_text(json.dumps(example) + "\n")
    from tunewright.data import tokenize_examples

    task = pm.registries.tasks["tiny-images"]
    features, _, problems = tokenize_examples(
        [example], [f"{path}:1"], task, "tiny-images", {"size": 16}, ["black"], pm, None
    )
    assert problems == [] and features[0] is not None
