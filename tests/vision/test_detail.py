"""Detail: views of an image and their accounting, against OpenAI's published examples."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tunewright.vision import (
    detail_costs,
    high_size,
    image_tokens,
    low_size,
    resolve_detail,
    tile_boxes,
    view_count,
    view_pixels,
    view_sizes,
    views,
)


@pytest.mark.parametrize(
    "size, tokens",
    [
        ((1024, 1024), 765),
        ((2048, 4096), 1105),
        ((512, 512), 255),
        ((4096, 8192), 1105),
        ((100, 100), 255),
    ],
)
def test_high_detail_tokens_match_openais_examples(size, tokens):
    assert image_tokens(size, "high") == tokens
    assert image_tokens(size, "low") == 85


def test_low_fits_within_512_and_never_enlarges():
    assert low_size((1024, 768)) == (512, 384)
    assert low_size((300, 2000)) == (77, 512)
    assert low_size((28, 28)) == (28, 28)
    assert low_size((512, 100)) == (512, 100)


def test_high_geometry_fits_2048_then_shortest_side_768():
    assert high_size((1024, 1024)) == (768, 768)
    assert high_size((2048, 4096)) == (768, 1536)
    assert high_size((600, 400)) == (600, 400)  # never enlarged
    assert len(tile_boxes((1024, 1024))) == 4
    boxes = tile_boxes((600, 400))
    assert boxes == [(0, 0, 512, 400), (512, 0, 600, 400)]


def test_auto_is_low_when_the_image_fits_512():
    assert resolve_detail("auto", (512, 512)) == "low"
    assert resolve_detail(None, (513, 20)) == "high"
    assert resolve_detail("high", (28, 28)) == "high"
    with pytest.raises(ValueError, match="allowed: low, high, auto"):
        resolve_detail("medium", (1, 1))


def test_views_cover_the_image_and_match_the_accounting():
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (1000, 1500, 3), dtype=np.uint8))
    low = views(image, "low")
    high = views(image, "high")
    assert [v.size for v in low] == view_sizes(image.size, "low") == [(512, 341)]
    assert [v.size for v in high] == view_sizes(image.size, "high")
    assert high[0].size == (512, 341) and len(high) == 1 + 6  # overview + 3x2 tiles of 1152x768
    assert sum(w * h for w, h in (v.size for v in high[1:])) == 1152 * 768
    assert view_pixels(image.size, "high") == 512 * 341 + 1152 * 768
    assert view_count(image.size, "auto") == 7
    # at least 4x fewer pixels at low detail for a photo of this size
    assert view_pixels(image.size, "high") / view_pixels(image.size, "low") > 4
    assert all(v.mode == "RGB" for v in high)


def test_small_image_views_are_the_image_itself():
    image = Image.new("RGBA", (28, 28), (1, 2, 3, 4))
    [view] = views(image, "auto")
    assert view is image
    assert [v.size for v in views(image, "high")] == [(28, 28), (28, 28)]


def test_detail_costs():
    costs = detail_costs((2048, 4096), None)
    assert costs["low"] == {"views": 1, "pixels": 256 * 512, "tokens": 85}
    assert costs["high"]["tokens"] == 1105 and costs["as_set"] == costs["high"]
