"""The packaged MobileNetV2: torchvision's ImageNet weights in transformers' own class."""

from __future__ import annotations

import shutil

import pytest
import torch

from tunewright.vision import classifiers
from tunewright.vision.classifiers import (
    WeightsError,
    mobilenet_v2_image_processor,
    mobilenet_v2_imagenet,
    mobilenet_v2_weights_file,
    torchvision_to_transformers_key,
)

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def imagenet_model():
    return mobilenet_v2_imagenet()


def photo(name):
    from PIL import Image
    from skimage import data

    return Image.fromarray(getattr(data, name)())


def test_remap_is_one_to_one_onto_transformers_names():
    from transformers import MobileNetV2ForImageClassification

    source = torch.load(mobilenet_v2_weights_file(), map_location="cpu", weights_only=True)
    mapped = [torchvision_to_transformers_key(key) for key in source]
    expected = MobileNetV2ForImageClassification(classifiers.mobilenet_v2_config()).state_dict()
    assert len(source) == 314
    assert len(set(mapped)) == len(mapped) == len(expected)
    assert set(mapped) == set(expected)
    for key, name in zip(source, mapped):
        assert tuple(source[key].shape) == tuple(expected[name].shape), (key, name)


@pytest.mark.parametrize("key", ["features.19.0.weight", "features.5.conv.4.weight", "fc.weight"])
def test_remap_refuses_keys_it_does_not_know(key):
    with pytest.raises(WeightsError, match="not a tensor of torchvision's MobileNetV2"):
        torchvision_to_transformers_key(key)


@pytest.mark.parametrize(
    "name, accepted",
    [
        ("chelsea", {281, 282, 285}),  # a cat: tabby, tiger cat or Egyptian cat
        ("coffee", {967}),  # espresso
    ],
)
def test_pretrained_model_names_the_imagenet_class_of_a_real_photo(imagenet_model, name, accepted):
    processor = mobilenet_v2_image_processor()
    pixels = processor(images=photo(name), return_tensors="pt")["pixel_values"]  # (1, 3, 224, 224)
    assert tuple(pixels.shape) == (1, 3, 224, 224)
    with torch.no_grad():
        probabilities = imagenet_model(pixel_values=pixels).logits.softmax(-1)[0]  # (1000,)
    top = int(probabilities.argmax())
    assert top in accepted, f"{name}: top class {top} ({float(probabilities[top]):.2f})"
    assert float(probabilities[sorted(accepted)].sum()) > 0.8


def test_saved_folder_loads_through_the_auto_classes(mobilenet_v2_dir, imagenet_model):
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(mobilenet_v2_dir).eval()
    processor = AutoImageProcessor.from_pretrained(mobilenet_v2_dir, use_fast=False)
    assert type(model).__name__ == "MobileNetV2ForImageClassification"
    assert processor.crop_size == {"height": 224, "width": 224} and processor.size == {
        "shortest_edge": 256
    }
    assert processor.image_mean == classifiers.IMAGENET_MEAN
    pixels = processor(images=photo("coffee"), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixels).logits,
            imagenet_model(pixel_values=pixels).logits,
            atol=1e-5,
            rtol=0,
        )
    assert model.config.tunewright_source["sha256"] == classifiers.MOBILENET_V2_SHA256


def test_a_changed_weights_file_is_refused(tmp_path):
    changed = tmp_path / classifiers.MOBILENET_V2_FILE
    shutil.copyfile(mobilenet_v2_weights_file(), changed)
    with open(changed, "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(WeightsError, match="sha256 differs"):
        mobilenet_v2_imagenet(changed)
