"""What validate says about images: counts, refusals by reason, pixels at high and low detail."""

from __future__ import annotations

import base64
import io

from PIL import Image

from tunewright.vision import check_example, refusal_counts, render_summary, summarize
from tunewright.vision.demo import bad_images


def url(image: Image.Image, fmt: str = "PNG", media_type: str = "image/png") -> str:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return f"data:{media_type};base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(reference, detail=None):
    body = {"url": reference} if detail is None else {"url": reference, "detail": detail}
    return {
        "messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": body}]},
            {"role": "assistant", "content": "ok"},
        ]
    }


def test_summary_counts_and_renders():
    gif, _ = bad_images()["cat.gif"]
    examples = [
        chat(url(Image.new("RGB", (1024, 1024)))),  # auto -> high
        chat(url(Image.new("L", (28, 28)))),  # auto -> low, converted
        chat(url(Image.new("RGB", (1024, 1024)), "JPEG", "image/jpeg"), "low"),
        chat("data:image/gif;base64," + base64.b64encode(gif).decode()),  # refused
        {
            "messages": [
                {"role": "user", "content": "no image"},
                {"role": "assistant", "content": "ok"},
            ]
        },
    ]
    summary = summarize(examples)
    assert (
        summary["images"] == 4 and summary["accepted"] == 3 and summary["examples_with_images"] == 4
    )
    assert summary["formats"] == {"PNG": 2, "JPEG": 1}
    assert summary["converted"] == {"L": 1}
    assert summary["refused"] == {"images": 1, "examples": 1, "reasons": {"format": 1}}
    assert summary["detail"] == {"low": 2, "high": 1}
    costs = summary["costs"]
    assert costs["low"]["pixels"] == 512 * 512 * 2 + 28 * 28
    assert costs["high"]["pixels"] == (512 * 512 + 768 * 768) * 2 + 2 * 28 * 28
    assert costs["as_set"]["pixels"] == 512 * 512 + 768 * 768 + 28 * 28 + 512 * 512
    assert costs["high"]["tokens"] == 765 * 2 + 255 and costs["low"]["tokens"] == 85 * 3
    lines = render_summary(summary)
    assert lines[0].startswith(
        "images: 4 in 4 examples, 3 accepted (PNG 2, JPEG 1), 28x28 to 1024x1024"
    )
    assert any("converted to RGB/RGBA: 1 (L 1)" in line for line in lines)
    assert any(
        line.strip() == "refused: 1 image in 1 example (not JPEG, PNG or WEBP 1)" for line in lines
    )
    assert any("at low detail" in line and "(3.2x more)" in line for line in lines)


def test_job_detail_overrides_each_image():
    examples = [chat(url(Image.new("RGB", (1024, 1024))), "high")]
    assert summarize(examples, {"detail": "low"})["detail"] == {"low": 1, "high": 0}


def test_no_images_no_lines():
    assert summarize([{"text": "a", "label": 1}]) == {"images": 0}
    assert render_summary({"images": 0}) == []


def test_refusal_counts_from_problems():
    gif, _ = bad_images()["cat.gif"]
    problems = check_example(chat("data:image/gif;base64," + base64.b64encode(gif).decode()), "d:1")
    assert refusal_counts([*problems, "not an image problem"]) == {"format": 1}


def test_an_image_another_rule_refused_is_counted_as_refused_and_reaches_nothing():
    """A screening plugin's exclusion (a problem at the example's location naming the image):
    the image passed the checks, but neither its pixels nor its tokens reach the model."""
    from tunewright.vision import ImageProblem

    examples = [chat(url(Image.new("RGB", (1024, 1024)))), chat(url(Image.new("RGB", (64, 64))))]
    locations = ["train.jsonl:1", "train.jsonl:2"]
    screened = ImageProblem(
        "train.jsonl:1",
        "image 1: excluded by face screening: a face",
        "excluded",
        reason="screened",
        image=1,
    )
    elsewhere = ImageProblem(
        "other.jsonl:1", "image 1: excluded", "excluded", reason="screened", image=1
    )
    summary = summarize(examples, locations=locations, problems=[screened, elsewhere])
    assert summary["accepted"] == 1 and summary["formats"] == {"PNG": 1}
    assert summary["refused"] == {"images": 1, "examples": 1, "reasons": {"screened": 1}}
    assert (
        summary["costs"]["high"]["pixels"] == 64 * 64 * 2
    )  # only the small image: overview + its one tile
    assert summary == summarize(examples[1:], locations=locations[1:]) | {
        "images": 2,
        "examples_with_images": 2,
        "refused": summary["refused"],
    }
