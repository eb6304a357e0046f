"""``edge serve`` with an image+text bundle: OpenAI ``image_url`` parts (data URLs) reach the model
as ``generate`` takes them, and a refused image is refused with validate's reason. In process
(Starlette's test client), on the session's tiny image+text bundle."""

from __future__ import annotations

import base64
import io

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client(image_text_chat_bundle):
    from starlette.testclient import TestClient

    from tunewright.edge.runtime.serve.cli import build, parser

    args = parser().parse_args([f"vlm={image_text_chat_bundle}", "--threads", "1"])
    app, models = build(args, None)
    with TestClient(app) as client:
        yield client, models["vlm"].predictor


def red_png() -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (40, 40), (220, 30, 30)).save(out, "PNG")
    return out.getvalue()


def ask(url: str, **extra) -> dict:
    return {
        "model": "vlm",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": url}},
                    {"type": "text", "text": "What colour is this?"},
                ],
            }
        ],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


def test_an_image_url_part_reaches_the_model(client):
    from PIL import Image

    http, predictor = client
    url = "data:image/png;base64," + base64.b64encode(red_png()).decode()
    r = http.post("/v1/chat/completions", json=ask(url))
    assert r.status_code == 200, r.text
    expected = predictor.generate(
        "What colour is this?", images=[Image.open(io.BytesIO(red_png()))], max_new_tokens=4
    )
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert r.json()["usage"]["prompt_tokens"] > predictor.tokens_per_view  # the image's tokens


def test_a_bomb_in_a_chat_is_refused_with_validates_reason(client):
    from tunewright.vision.demo import huge_header_png

    http, _ = client
    url = "data:image/png;base64," + base64.b64encode(huge_header_png()).decode()
    r = http.post("/v1/chat/completions", json=ask(url))
    assert r.status_code == 400 and r.json()["error"]["code"] == "bomb"
    assert (
        http.post("/v1/chat/completions", json=ask("https://example.com/a.png")).json()["error"][
            "code"
        ]
        == "remote-off"
    )
