"""One image from its bytes, and the images of one example: every rule with a real bad file."""

from __future__ import annotations

import base64
import io
import warnings

import numpy as np
import pytest
from PIL import Image, ImageFile

from tunewright import DataError
from tunewright.vision import (
    ImageProblem,
    ImageRefused,
    VisionSettings,
    check_example,
    check_image,
    image_refs,
    load_images,
    sniff_format,
)
from tunewright.vision.demo import (
    animated,
    bad_images,
    decompression_bomb,
    exif_rotated_jpeg,
    heic_header,
    huge_header_png,
)


def encode(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def photo(size=(64, 48)) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def refused(data: bytes, **kwargs) -> ImageRefused:
    with pytest.raises(ImageRefused) as caught:
        check_image(data, **kwargs)
    return caught.value


def data_url(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode()


# ---------------------------------------------------------------------------------------------
# Formats, from the bytes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, options", [("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 80})]
)
def test_accepted_formats_decode_completely(fmt, options):
    data = encode(photo(), fmt, **options)
    checked = check_image(data)
    assert (checked.format, checked.size, checked.image.mode) == (fmt, (64, 48), "RGB")
    assert checked.nbytes == len(data) and not checked.converted and not checked.oriented
    checked.image.tobytes()  # decoded: usable without the source bytes


@pytest.mark.parametrize(
    "name, named",
    [
        ("cat.gif", "GIF"),
        ("gif-named.png", "GIF"),
        ("scan.bmp", "BMP"),
        ("scan.tiff", "TIFF"),
        ("page.pdf", "PDF"),
        ("drawing.svg", "SVG"),
        ("phone.heic", "HEIC"),
    ],
)
def test_each_refused_format_is_named(name, named):
    data, reason = bad_images()[name]
    assert sniff_format(data) == named
    error = refused(data)
    assert (error.reason, reason) == ("format", "format")
    assert f"{named} file" in str(error) and "allowed: JPEG, PNG or WEBP" in str(error)


def test_the_name_never_decides():
    # A GIF saved as .png: Pillow itself would read it, as a GIF; the rule is on the bytes.
    data, _ = bad_images()["gif-named.png"]
    assert Image.open(io.BytesIO(data)).format == "GIF"
    assert "whatever its name" in str(refused(data))


def test_avif_and_unknown_bytes_are_refused():
    assert (
        sniff_format(encode(photo(), "AVIF")) == "AVIF"
    )  # Pillow 13 reads AVIF; the services do not
    assert refused(encode(photo(), "AVIF")).reason == "format"
    error = refused(b"hello, this is text")
    assert error.reason == "format" and "not an image format" in str(error)
    assert sniff_format(heic_header()) == "HEIC"


def test_data_url_declared_type_must_match_the_bytes():
    png = encode(photo(), "PNG")
    example = {"image": data_url(png, "image/jpeg"), "label": "x"}
    [problem] = check_example(example, "d.jsonl:3")
    assert problem.reason == "type-mismatch" and problem.location == "d.jsonl:3"
    assert problem.message.startswith("image 1 (data:image/jpeg;base64,...")
    assert "declares image/jpeg, but its bytes are a PNG image" in problem.message
    assert check_example({"image": data_url(png), "label": "x"}, "d.jsonl:4") == []
    # no declared type at all, or a GIF declared honestly: both refused, each with its reason
    assert (
        check_example(
            {"image": "data:;base64," + base64.b64encode(png).decode(), "label": 1}, "d:1"
        )[0].reason
        == "type-mismatch"
    )
    gif, _ = bad_images()["cat.gif"]
    assert (
        check_example({"image": data_url(gif, "image/gif"), "label": 1}, "d:2")[0].reason
        == "format"
    )


# ---------------------------------------------------------------------------------------------
# Decoding: truncated, corrupt, bombs, animation
# ---------------------------------------------------------------------------------------------


def test_truncated_jpeg_passes_verify_but_is_refused():
    data, _ = bad_images()["truncated.jpg"]
    Image.open(io.BytesIO(data)).verify()  # Pillow's verify() does not notice...
    error = refused(data)  # ...load() does
    assert error.reason == "corrupt" and "truncated" in str(error)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize("name", ["truncated.png", "empty.jpg"])
def test_truncated_and_empty_files_are_refused(name):
    data, reason = bad_images()[name]
    assert refused(data).reason == reason == "corrupt"


def test_corrupt_data_inside_a_valid_header_is_refused():
    data = bytearray(encode(photo(), "PNG"))
    data[60:90] = bytes(30)  # the IDAT stream, zeroed
    assert refused(bytes(data)).reason == "corrupt"


def test_decompression_bomb_is_refused_before_decoding_without_touching_global_state():
    bomb = decompression_bomb()
    assert len(bomb) < 500_000
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither Pillow's warning nor any other escapes
        error = refused(bomb)
        assert error.reason == "bomb" and "9,500 x 9,500 = 90,250,000 pixels" in str(error)
        huge = refused(huge_header_png())
        assert huge.reason == "bomb" and "decompression bomb" in str(huge)
    assert before == Image.MAX_IMAGE_PIXELS


def test_max_pixels_is_a_setting_per_call():
    data = encode(photo((100, 100)), "PNG")
    assert refused(data, settings=VisionSettings(max_pixels=9_999)).reason == "bomb"
    assert check_image(data, VisionSettings(max_pixels=10_000)).size == (100, 100)
    assert check_image(data).size == (100, 100)  # the stricter call left nothing behind
    with pytest.raises(Exception, match="less than or equal"):
        VisionSettings(max_pixels=10**9)  # above what Pillow opens at all


@pytest.mark.parametrize("fmt, kind", [("PNG", "PNG (APNG)"), ("WEBP", "WEBP")])
def test_animated_images_are_refused(fmt, kind):
    error = refused(animated(fmt, frames=4))
    assert error.reason == "animated" and f"animated {kind} of 4 frames" in str(error)
    still = encode(photo(), fmt, save_all=True)  # saved with save_all but one frame: still
    assert check_image(still).format == fmt


# ---------------------------------------------------------------------------------------------
# Modes and orientation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mode, fmt, expected",
    [
        ("L", "PNG", "RGB"),
        ("1", "PNG", "RGB"),
        ("P", "PNG", "RGB"),
        ("LA", "PNG", "RGBA"),
        ("RGBA", "PNG", "RGBA"),
        ("CMYK", "JPEG", "RGB"),
        ("L", "JPEG", "RGB"),
    ],
)
def test_other_colour_modes_are_converted_and_reported(mode, fmt, expected):
    checked = check_image(encode(photo().convert(mode), fmt))
    assert checked.image.mode == expected
    assert checked.mode == mode and checked.converted == (mode not in ("RGB", "RGBA"))


def test_palette_with_transparency_keeps_it():
    image = photo().convert("P")
    checked = check_image(encode(image, "PNG", transparency=0))
    assert checked.image.mode == "RGBA" and checked.converted


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.linspace(0, 65535, 64 * 48).reshape(48, 64).astype(np.uint16)
    checked = check_image(encode(Image.fromarray(values), "PNG"))
    assert checked.mode.startswith("I")
    pixels = np.asarray(checked.image)
    assert pixels.min() == 0 and pixels.max() == 255
    assert 100 < pixels.mean() < 155  # clipping would make nearly every pixel 255


def test_exif_orientation_is_applied():
    data = exif_rotated_jpeg()
    assert Image.open(io.BytesIO(data)).size == (60, 40)
    checked = check_image(data)
    assert checked.size == (40, 60) and checked.oriented
    # the blue band was on the left; rotated 90 degrees clockwise it is on top
    top, bottom = checked.image.getpixel((20, 5)), checked.image.getpixel((20, 55))
    assert top[2] > 150 and bottom[0] > 150


# ---------------------------------------------------------------------------------------------
# Examples: where images are, limits, assistant turns
# ---------------------------------------------------------------------------------------------


def chat(*parts, role="user", answer="ok"):
    return {
        "messages": [
            {"role": role, "content": list(parts)},
            {"role": "assistant", "content": answer},
        ]
    }


def image_part(url, detail=None):
    body = {"url": url} if detail is None else {"url": url, "detail": detail}
    return {"type": "image_url", "image_url": body}


def test_image_refs_of_both_example_shapes():
    refs = image_refs(
        chat({"type": "text", "text": "what?"}, image_part("a.png", "low"), image_part("b.png"))
    )
    assert [(r.number, r.reference, r.detail, r.role, r.message, r.part) for r in refs] == [
        (1, "a.png", "low", "user", 1, 2),
        (2, "b.png", None, "user", 1, 3),
    ]
    [ref] = image_refs({"image": "x.jpg", "label": 3, "detail": "high"})
    assert (ref.reference, ref.detail, ref.role) == ("x.jpg", "high", None)
    assert image_refs({"text": "no image", "label": 1}) == []
    assert image_refs(chat({"type": "text", "text": "hi"})) == []


def test_malformed_parts_are_refused_each_with_what_is_allowed(tmp_path):
    example = chat(
        image_part("a.png", "medium"),
        {"type": "image_url", "image_url": "a.png"},
        {"type": "image", "path": "a.png"},
    )
    problems = check_example(example, "d.jsonl:1")
    assert [p.reason for p in problems] == ["bad-part"] * 3
    assert "'detail' is 'medium' (allowed: low, high, auto)" in problems[0].message
    assert "must be an object with a 'url' string" in problems[1].message
    assert "write images as {'type': 'image_url'" in problems[2].message
    assert [p.image for p in problems] == [1, 2, 3]


def test_images_in_assistant_turns_are_refused(tmp_path):
    url = data_url(encode(photo(), "PNG"))
    example = {
        "messages": [
            {"role": "user", "content": [image_part(url)]},
            {"role": "assistant", "content": [image_part(url)]},
        ]
    }
    [problem] = check_example(example, "d.jsonl:2")
    assert problem.reason == "assistant-image" and problem.image == 2
    assert "allowed: images in user and system turns" in problem.message
    system = {
        "messages": [
            {"role": "system", "content": [image_part(url)]},
            {"role": "user", "content": "?"},
            {"role": "assistant", "content": "!"},
        ]
    }
    assert check_example(system, "d.jsonl:3") == []


def test_per_example_limits_default_to_the_hosted_numbers():
    settings = VisionSettings()
    assert (settings.max_images, settings.max_image_bytes, settings.max_example_bytes) == (
        10,
        10_000_000,
        10_000_000,
    )
    url = data_url(encode(photo((8, 8)), "PNG"))
    eleven = chat(*[image_part(url) for _ in range(11)])
    [problem] = check_example(eleven, "d.jsonl:5")
    assert problem.reason == "too-many-images" and problem.image is None
    assert problem.message.startswith("11 images, more than vision.max_images 10")
    assert check_example(chat(*[image_part(url) for _ in range(10)]), "d.jsonl:6") == []


def test_byte_limits_per_image_and_per_example():
    data = encode(photo((64, 64)), "PNG")  # about 12 kB of noise
    url = data_url(data)
    small = VisionSettings(max_image_bytes=len(data) - 1, max_example_bytes=10**6)
    [problem] = check_example(chat(image_part(url)), "d:1", small)
    assert problem.reason == "too-large" and "vision.max_image_bytes" in problem.message
    assert refused(data, settings=small).reason == "too-large"
    together = VisionSettings(max_example_bytes=2 * len(data))
    problems = check_example(chat(*[image_part(url)] * 3), "d:2", together)
    assert [p.reason for p in problems] == ["example-too-large"]
    assert f"{3 * len(data):,} bytes together" in problems[0].message


def test_refusals_exclude_by_default_and_stop_the_job_on_request():
    gif, _ = bad_images()["cat.gif"]
    example = {"image": data_url(gif, "image/gif"), "label": "cat"}
    [excluded] = check_example(example, "d:1")
    [error] = check_example(example, "d:1", {"on_refused": "error"})
    assert isinstance(excluded, ImageProblem)
    assert (excluded.severity, error.severity) == ("excluded", "error")
    assert str(excluded).startswith("d:1: ") and "image 1 (" in str(excluded)


def test_load_images_for_tokenize():
    rgb = encode(photo((600, 400)), "JPEG")
    grey = encode(photo((30, 20)).convert("L"), "PNG")
    example = chat(image_part(data_url(rgb, "image/jpeg")), image_part(data_url(grey), "high"))
    first, second = load_images(example)
    assert (first.image.mode, first.image.size, first.detail()) == ("RGB", (600, 400), "high")
    assert (second.image.mode, second.detail(), second.detail("low")) == ("RGB", "high", "low")
    assert first.ref.number == 1 and second.checked.converted
    gif, _ = bad_images()["cat.gif"]
    with pytest.raises(DataError, match="image 1 .*GIF file"):
        load_images({"image": data_url(gif, "image/gif"), "label": 1})
