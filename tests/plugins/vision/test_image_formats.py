"""Image classification data formats: a folder per class, JSONL and CSV, through format: auto."""

from __future__ import annotations

import io
import json
import os

import pytest
from PIL import Image

from tunewright import DatasetFormat, get_plugin_manager
from tunewright.data import read_examples
from tunewright.vision import SOURCE_KEY, check_example, load_images


@pytest.fixture(scope="module")
def registries():
    return get_plugin_manager().registries


def png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "data"
    for label, colour in (("cat", "red"), ("dog", "blue"), ("7", "green")):
        (root / "train" / label).mkdir(parents=True)
        for n in range(2):
            (root / "train" / label / f"{n}.png").write_bytes(png(colour))
    (root / "train" / ".DS_Store").write_bytes(b"\x00\x00")
    return root


def test_formats_are_registered(registries):
    found = registries.dataset_formats
    for name in ("image-folder", "image-label", "image-csv"):
        assert isinstance(found[name], DatasetFormat)
        assert found[name].task_for([]) == "image-classification"
        assert registries.owner("dataset_formats", name) == "vision-formats"
    assert found["image-folder"].directory is True


def test_folder_per_class(registries, folder):
    fmt = registries.dataset_formats["image-folder"]
    records = list(fmt.read(folder / "train"))
    assert [n for n, _ in records] == list(range(1, 7))
    examples = [fmt.to_example(r) for _, r in records]
    assert [(e["image"], e["label"]) for e in examples] == [
        ("7/0.png", 7),
        ("7/1.png", 7),
        ("cat/0.png", "cat"),
        ("cat/1.png", "cat"),
        ("dog/0.png", "dog"),
        ("dog/1.png", "dog"),
    ]
    assert examples[0][SOURCE_KEY] == {"root": str(folder / "train")}
    assert check_example(examples[2], f"{folder / 'train'}:3") == []
    assert load_images(examples[4])[0].image.getpixel((0, 0)) == (0, 0, 255)


def test_folder_stray_files_and_nested_folders_are_reported(registries, folder):
    (folder / "train" / "notes.txt").write_text("hi")
    (folder / "train" / "cat" / "more").mkdir()
    records = dict(registries.dataset_formats["image-folder"].read(folder / "train"))
    errors = [str(r) for r in records.values() if isinstance(r, Exception)]
    assert any("cat/more is a folder inside class folder cat" in e for e in errors)
    assert any("notes.txt is a file outside any class folder" in e for e in errors)


def test_folder_non_images_are_examples_that_get_refused(registries, folder):
    (folder / "train" / "cat" / "readme.txt").write_text("not an image")
    fmt = registries.dataset_formats["image-folder"]
    examples = [fmt.to_example(r) for _, r in fmt.read(folder / "train")]
    readme = next(e for e in examples if e["image"] == "cat/readme.txt")
    [problem] = check_example(readme, f"{folder / 'train'}:5")
    assert problem.reason == "format" and problem.severity == "excluded"


def test_jsonl_auto_detected_with_the_files_folder(registries, folder):
    path = folder / "train.jsonl"
    rows = [
        {"image": "train/cat/0.png", "label": "cat"},
        {"image": "train/dog/0.png", "label": "dog", "detail": "low"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, locations, problems = read_examples(path, registries)
    assert problems == []
    assert examples[1] == {
        "image": "train/dog/0.png",
        "label": "dog",
        "detail": "low",
        SOURCE_KEY: {"root": str(folder)},
    }
    assert locations == [f"{path}:1", f"{path}:2"]
    assert all(check_example(e, where) == [] for e, where in zip(examples, locations))


def test_jsonl_array_and_record_errors(registries, folder):
    path = folder / "train.json"
    path.write_text(
        '[\n {"image": "train/cat/0.png", "label": "cat"},\n {"image": 3, "label": "x"},\n'
        ' {"image": "a.png"},\n {"image": "b.png", "label": true},\n'
        ' {"image": "c.png", "label": "c", "detail": "huge"}\n]\n'
    )
    examples, locations, problems = read_examples(path, registries)
    assert len(examples) == 1 and locations == [f"{path}:2"]
    messages = {p.location.rsplit(":", 1)[1]: p.message for p in problems}
    assert "'image' must be a path, a data URL or an http(s) URL, got a number" in messages["3"]
    assert "no 'label' key" in messages["4"]
    assert "'label' must be a class name or a whole number, got true/false" in messages["5"]
    assert "'detail' is 'huge' (allowed: low, high, auto)" in messages["6"]


def test_csv_auto_detected_and_text_csv_still_read_as_text(registries, folder):
    images = folder / "train.csv"
    images.write_text("Image,Label\ntrain/cat/0.png,cat\ntrain/7/1.png,7\n")
    examples, _, problems = read_examples(images, registries)
    assert problems == []
    assert [(e["image"], e["label"]) for e in examples] == [
        ("train/cat/0.png", "cat"),
        ("train/7/1.png", 7),
    ]
    assert examples[0][SOURCE_KEY] == {"root": str(folder)}
    text = folder / "text.csv"
    text.write_text("sentence,category\nhello there,1\nbye,0\n")
    examples, _, problems = read_examples(text, registries)
    assert problems == [] and examples == [
        {"text": "hello there", "label": 1},
        {"text": "bye", "label": 0},
    ]
    neither = folder / "neither.csv"
    neither.write_text("name,label\nx,1\n")
    _, _, problems = read_examples(neither, registries)
    assert (
        "has no image column (allowed names: image, image_path, path, file) and no text column"
        in problems[0].message
    )


def test_folder_escape_through_a_symlinked_class_member(registries, folder, tmp_path):
    (tmp_path / "private.png").write_bytes(png("black"))
    os.symlink(tmp_path / "private.png", folder / "train" / "cat" / "sneaky.png")
    fmt = registries.dataset_formats["image-folder"]
    sneaky = next(
        fmt.to_example(r) for _, r in fmt.read(folder / "train") if r["image"] == "cat/sneaky.png"
    )
    [problem] = check_example(sneaky, f"{folder / 'train'}:4")
    assert problem.reason == "escapes-folder"
