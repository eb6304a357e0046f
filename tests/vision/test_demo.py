"""The demo data set: real packaged images, deterministic, atomic, and every bad file refused."""

from __future__ import annotations

import hashlib
import json

import pytest

from tunewright import UsageError
from tunewright.vision import check_example, image_refs, summarize
from tunewright.vision.demo import MARKER, PHOTOS, QUESTION, bad_images, write_demo

pytest.importorskip("mlxtend")


def digest(folder):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    return hashlib.sha256(
        b"".join(p.relative_to(folder).as_posix().encode() + p.read_bytes() for p in files)
    ).hexdigest()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return write_demo(tmp_path_factory.mktemp("demo") / "demo", per_class=3, held_out=1)


def test_layout_and_files(demo):
    assert sorted(p.name for p in demo.digits_train.iterdir()) == [str(d) for d in range(10)]
    suffixes = {p.suffix for p in demo.digits_train.rglob("*.*")}
    assert suffixes == {".png", ".jpg", ".webp"}
    rows = [json.loads(line) for line in demo.classification_train.read_text().splitlines()]
    assert len(rows) == 30 and rows[0] == {"image": "digits/train/0/0001.png", "label": 0}
    assert demo.classification_csv.read_text().splitlines()[:2] == [
        "image,label",
        "digits/train/0/0001.png,0",
    ]
    chats = [json.loads(line) for line in demo.image_to_text_train.read_text().splitlines()]
    assert len(chats) == 30 + len(PHOTOS)
    first = chats[0]["messages"]
    assert (
        first[0]["content"][1] == {"type": "text", "text": QUESTION} and first[1]["content"] == "0"
    )
    assert len(demo.image_to_text_test.read_text().splitlines()) == 10


def test_good_data_passes_every_check(demo):
    for path in (demo.classification_train, demo.classification_test, demo.image_to_text_train):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            assert check_example(json.loads(line), f"{path}:{number}") == []
    photos = [
        json.loads(line)
        for line in demo.image_to_text_train.read_text().splitlines()
        if "photos/" in line
    ]
    summary = summarize(photos, locations=[f"{demo.image_to_text_train}:1"] * len(photos))
    assert summary["accepted"] == len(PHOTOS) and summary["detail"]["high"] >= 2  # rocket, galaxies


def test_bad_folder_holds_every_bad_file_and_some_good_ones(demo):
    names = {p.name for p in (demo.bad / "cat").iterdir()}
    assert set(bad_images()) <= names and {"cat.jpg", "rotated.jpg", "outside.png"} <= names
    assert (demo.bad / "cat" / "outside.png").is_symlink()
    for name, (_data, reason) in bad_images().items():
        example = {"image": f"cat/{name}", "label": "cat", "image_source": {"root": str(demo.bad)}}
        [problem] = check_example(example, f"{demo.bad}:1")
        assert problem.reason == reason, name


def test_deterministic_and_reused(demo, tmp_path):
    again = write_demo(tmp_path / "again", per_class=3, held_out=1)
    assert digest(again.root) == digest(demo.root)
    assert write_demo(demo.root, per_class=3, held_out=1).root == demo.root  # same settings: reused


def test_never_writes_over_other_folders(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UsageError, match="not a tunewright demo folder"):
        write_demo(tmp_path / "mine", per_class=1, held_out=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    paths = write_demo(tmp_path / "demo", per_class=1, held_out=1)
    with pytest.raises(UsageError, match="other settings"):
        write_demo(paths.root, per_class=2, held_out=1)
    write_demo(paths.root, per_class=2, held_out=1, overwrite=True)
    assert json.loads((paths.root / MARKER).read_text())["per_class"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staging left


def test_chat_image_refs_point_inside_the_demo(demo):
    for line in demo.image_to_text_train.read_text().splitlines():
        for ref in image_refs(json.loads(line)):
            assert (demo.root / ref.reference).is_file()
