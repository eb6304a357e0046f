"""The vision-data plugin through a real plugin manager: the vision: section and the transform."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from PIL import Image

from tunewright import get_plugin_manager
from tunewright.config import load_config
from tunewright.vision import SOURCE_KEY, VisionSettings, load_images


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


def test_vision_section_is_registered(pm):
    assert pm.registries.config_sections["vision"] is VisionSettings
    assert pm.registries.owner("config_sections", "vision") == "vision-data"


def test_transform_example_hook_makes_examples_self_contained(pm, tmp_path):
    folder = tmp_path / "data"
    (folder / "img").mkdir(parents=True)
    buffer = io.BytesIO()
    Image.new("L", (900, 600), 77).save(buffer, "JPEG")
    (folder / "img" / "a.jpg").write_bytes(buffer.getvalue())
    config = load_config(
        {
            "model": "m",
            "task": "chat",
            "data": {"train": str(folder / "train.jsonl")},
            "vision": {"detail": "low"},
        },
        pm.registries,
    )
    example = {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "img/a.jpg"}}]},
            {"role": "assistant", "content": "grey"},
        ]
    }
    (folder / "train.jsonl").write_text(json.dumps(example) + "\n")
    results = [
        r
        for r in pm.hook.transform_example(
            example=example,
            task="image-to-text",
            config=config,
            location=f"{folder / 'train.jsonl'}:1",
        )
        if r is not None
    ]
    [prepared] = results
    assert prepared[SOURCE_KEY]["root"] == str(folder)
    [image] = load_images(prepared)
    assert (image.image.mode, image.detail()) == ("RGB", "low")
    text = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    assert not any(
        pm.hook.transform_example(example=text, task="chat", config=config, location="x:1")
    )


def test_importing_vision_pulls_neither_torch_nor_opencv():
    code = (
        "import sys, json, tunewright.vision, tunewright.plugins.vision.data, "
        "tunewright.plugins.vision.formats, tunewright.plugins.vision.faces, tunewright.vision.demo;"
        "print(json.dumps([m for m in ('torch', 'transformers', 'cv2', 'mlxtend', 'skimage') if m in sys.modules]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []
