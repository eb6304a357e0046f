"""Examples made self-contained for Task.tokenize: their folder, the job's reading settings, detail."""

from __future__ import annotations

import copy
import io

import pytest
from PIL import Image

from tunewright import ConfigError, DataError, get_plugin_manager
from tunewright.config import load_config
from tunewright.vision import SOURCE_KEY, VisionSettings, load_images, prepare_example, settings_of
from tunewright.vision.transform import job_root


@pytest.fixture(scope="module")
def registries():
    return get_plugin_manager().registries


def job(registries, tmp_path, **vision):
    data = {
        "model": "m",
        "task": "chat",
        "data": {
            "train": str(tmp_path / "data" / "train.jsonl"),
            "validation": str(tmp_path / "data" / "val.jsonl"),
        },
    }
    if vision:
        data["vision"] = vision
    return load_config(data, registries)


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "data" / "cats").mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("RGB", (700, 300), "white").save(buffer, "PNG")
    (tmp_path / "data" / "cats" / "1.png").write_bytes(buffer.getvalue())
    return tmp_path / "data"


CHAT = {
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "cats/1.png", "detail": "high"}},
            ],
        },
        {"role": "assistant", "content": "a cat"},
    ]
}


def test_vision_section_is_validated_with_the_core_messages(registries, tmp_path):
    config = job(registries, tmp_path, detail="low", max_images=3)
    assert settings_of(config) == VisionSettings(detail="low", max_images=3)
    assert settings_of(job(registries, tmp_path)) == VisionSettings()
    with pytest.raises(
        ConfigError, match="vision.max_imges: unknown key; did you mean 'vision.max_images'"
    ):
        job(registries, tmp_path, max_imges=3)
    with pytest.raises(ConfigError, match="vision.on_refused"):
        job(registries, tmp_path, on_refused="ignore")


def test_prepare_example_writes_folder_settings_and_detail(registries, tmp_path, folder):
    config = job(registries, tmp_path, detail="low", allow_remote=True, max_image_bytes=123_456)
    original = copy.deepcopy(CHAT)
    prepared = prepare_example(CHAT, config)
    assert original == CHAT  # the input is not changed
    source = prepared[SOURCE_KEY]
    assert source["root"] == str(folder)
    assert (source["allow_remote"], source["max_image_bytes"]) == (True, 123_456)
    assert prepared["messages"][0]["content"][1]["image_url"]["detail"] == "low"
    [image] = load_images(prepared)  # no location needed any more
    assert image.detail() == "low" and image.image.size == (700, 300)
    with pytest.raises(DataError, match="nothing says which folder"):
        load_images(CHAT)


def test_limits_raised_in_the_config_hold_at_tokenize_time(registries, tmp_path, folder):
    many = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "cats/1.png"}} for _ in range(12)
                ],
            },
            {"role": "assistant", "content": "twelve cats"},
        ]
    }
    config = job(registries, tmp_path, max_images=12)
    prepared = prepare_example(many, config)
    assert len(load_images(prepared)) == 12
    with pytest.raises(DataError, match="more than vision.max_images 10"):
        load_images(prepare_example(many, job(registries, tmp_path)))


def test_classification_examples_get_the_detail_too(registries, tmp_path, folder):
    example = {"image": "cats/1.png", "label": "cat", SOURCE_KEY: {"root": str(folder)}}
    prepared = prepare_example(example, job(registries, tmp_path, detail="high"))
    assert prepared["detail"] == "high" and prepared[SOURCE_KEY]["root"] == str(folder)
    assert load_images(prepared)[0].detail() == "high"


def test_a_root_is_only_guessed_from_one_folder(registries, tmp_path, folder):
    assert job_root(job(registries, tmp_path)) == str(folder)
    split = load_config(
        {
            "model": "m",
            "task": "chat",
            "data": {
                "train": str(folder / "train.jsonl"),
                "validation": str(tmp_path / "val.jsonl"),
            },
        },
        registries,
    )
    assert job_root(split) is None
    assert "root" not in prepare_example(CHAT, split).get(SOURCE_KEY, {})
    assert prepare_example(CHAT, split, root=folder)[SOURCE_KEY]["root"] == str(folder)
    assert job_root(None) is None
    # the example's location says it: what the engine passes to transform_example
    (folder / "train.jsonl").write_text("{}\n")
    located = prepare_example(CHAT, split, location=f"{folder / 'train.jsonl'}:1")
    assert located[SOURCE_KEY]["root"] == str(folder)
    assert prepare_example(CHAT, None, location=f"{folder / 'train.jsonl'}:1")[SOURCE_KEY] == {
        "root": str(folder)
    }


def test_examples_without_images_pass_untouched(registries, tmp_path):
    text = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert prepare_example(text, job(registries, tmp_path, detail="low")) is text
