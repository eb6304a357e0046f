"""``edge serve``: one server subprocess for the module (a chat bundle, a text classifier and an
image classifier from the session fixtures), spoken to by clients no one here wrote (``openai``,
``tritonclient``) and by plain HTTP for the faults. The last test stops it with SIGTERM."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server(generator_bundle, classifier_bundle, image_classifier_bundle, tmp_path_factory):
    record = tmp_path_factory.mktemp("served")
    env = {
        **os.environ,
        "TUNEWRIGHT_API_KEY": KEY,
        "TUNEWRIGHT_SERVE_STEP_DELAY": "0.01",  # a tiny model, slowed so that requests overlap
        "OMP_NUM_THREADS": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "tunewright.edge.runtime",
        "serve",
        f"chat={generator_bundle}",
        f"cls={classifier_bundle}",
        f"img={image_classifier_bundle}",
        "--port",
        "0",
        "--max-queue",
        "3",
        "--max-body-mb",
        "1",
        "--max-tokens-cap",
        "64",
        "--context",
        "200",
        "--batch-window-ms",
        "100",
        "--record",
        str(record),
        "--grace",
        "20",
        "--threads",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"the server did not start: {proc.stderr.read()[-3000:]}")
    info = json.loads(line)
    url = info["serving"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield {"url": url, "proc": proc, "record": record, "info": info}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def post(server, path, body=None, *, headers=AUTH, content=None, timeout=30):
    return httpx.post(
        server["url"] + path, json=body, content=content, headers=headers, timeout=timeout
    )


def metric(server, name: str, **labels) -> float:
    text = httpx.get(server["url"] + "/metrics", headers=AUTH, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(
            f'{k}="{v}"' in line for k, v in labels.items()
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def png(size=(8, 8), fmt="PNG") -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, fmt)
    return out.getvalue()


def bomb() -> bytes:
    """A PNG whose header claims 20,000 x 20,000 pixels (validate's ``bomb``)."""
    from tunewright.vision.demo import huge_header_png

    return huge_header_png()


def data_url(data: bytes, media="image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


# -- the real clients --------------------------------------------------------------------------


def test_openai_client_chat_streamed_and_not(server):
    from openai import OpenAI

    client = OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=60)
    assert {m.id for m in client.models.list()} == {"chat", "cls", "img"}
    messages = [{"role": "user", "content": "What is 2 plus 2?"}]
    whole = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_tokens=6,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    choice = whole.choices[0]
    assert choice.finish_reason == "length"
    assert whole.usage.completion_tokens == 6 and whole.usage.prompt_tokens > 5
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + 6
    stream = client.chat.completions.create(
        model="chat",
        messages=messages,
        max_completion_tokens=6,
        temperature=0,
        seed=1,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    pieces, reasons, usage = [], [], None
    for event in stream:
        if event.usage:
            usage = event.usage
        for c in event.choices:
            pieces.append(c.delta.content or "")
            reasons.append(c.finish_reason)
    assert "".join(pieces) == choice.message.content  # greedy: the same answer
    assert reasons[-1] == "length" and usage.completion_tokens == 6
    sampled = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=5, temperature=0.9, top_p=0.9, seed=7
    )
    again = client.chat.completions.create(
        model="chat", messages=messages, max_tokens=5, temperature=0.9, top_p=0.9, seed=7
    )
    assert sampled.choices[0].message.content == again.choices[0].message.content


def test_stop_strings_cut_the_answer(server):
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "Count"}],
        "max_tokens": 12,
        "temperature": 0,
        "ignore_eos": True,
    }
    full = post(server, "/v1/chat/completions", body).json()["choices"][0]["message"]["content"]
    assert len(full) >= 4  # the tiny model's answer (newlines, as it happens)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    cut = post(server, "/v1/chat/completions", {**body, "stop": [stop]}).json()["choices"][0]
    assert cut["message"]["content"] == full[: full.find(stop)]
    assert cut["finish_reason"] == "stop"


def test_tritonclient_text_classifier(server, classifier_bundle):
    import tritonclient.http as triton

    from tunewright.edge.runtime import load_bundle

    client = triton.InferenceServerClient(server["url"].removeprefix("http://"))
    assert client.is_server_live()  # open without the key
    assert client.is_model_ready("cls", headers=AUTH)
    meta = client.get_model_metadata("cls", headers=AUTH)
    assert meta["inputs"][0] == {"name": "text", "datatype": "BYTES", "shape": [-1]}
    texts = ["good film", "awful slow plot"]
    given = triton.InferInput("text", [2], "BYTES")
    given.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=object), False)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=False),
        triton.InferRequestedOutput("probabilities", binary_data=False),
    ]
    result = client.infer("cls", [given], outputs=outputs, request_id="42", headers=AUTH)
    expected = load_bundle(classifier_bundle).predict(texts)
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == [e["label"] for e in expected]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (2, 2)
    np.testing.assert_allclose(
        probabilities[:, 1], [e["scores"]["pos"] for e in expected], atol=1e-5
    )
    assert result.get_response()["id"] == "42"


def test_image_classifier_takes_base64_images(server, image_classifier_bundle):
    from PIL import Image

    from tunewright.edge.runtime import load_bundle

    raw = png((40, 48))
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(raw).decode()],
            }
        ]
    }
    answer = post(server, "/v2/models/img/infer", body).json()
    expected = load_bundle(image_classifier_bundle).predict([Image.open(io.BytesIO(raw))])[0]
    assert answer["outputs"][0]["data"] == [expected["label"]]
    assert answer["outputs"][1]["shape"] == [1, 3]
    assert sum(answer["outputs"][1]["data"]) == pytest.approx(1.0, abs=1e-4)


def test_classifier_requests_that_arrive_together_are_batched(server):
    before = metric(server, "tunewright_serve_batches_total", model="cls")
    results = []

    def one(i):
        body = {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"fun plot {i}"]}
            ]
        }
        results.append(post(server, "/v2/models/cls/infer", body).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [200, 200, 200]
    assert metric(server, "tunewright_serve_batches_total", model="cls") - before < 3


# -- bad input: a clear JSON error, and the server keeps serving --------------------------------


def still_serving(server):
    ok = post(
        server,
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
    )
    assert ok.status_code == 200, ok.text


def test_malformed_json_is_400(server):
    for path in ("/v1/chat/completions", "/v2/models/cls/infer"):
        r = post(
            server,
            path,
            content=b'{"model": "chat", "messages": [',
            headers={**AUTH, "Content-Type": "application/json"},
        )
        assert r.status_code == 400, r.text
        assert "JSON" in json.dumps(r.json()["error"])
    still_serving(server)


def test_unknown_model_is_404_listing_the_known_ones(server):
    r = post(
        server,
        "/v1/chat/completions",
        {"model": "nope", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert r.status_code == 404
    assert r.json()["error"]["known"] == ["chat", "cls", "img"]
    r = post(server, "/v2/models/nope/infer", {"inputs": []})
    assert r.status_code == 404 and "chat, cls, img" in r.json()["error"]
    still_serving(server)


def test_limits_are_400_naming_the_limit(server):
    long = " ".join(["word"] * 400)
    r = post(
        server,
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": long}]},
    )
    assert r.status_code == 400 and "context of 200" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = post(
        server,
        "/v1/chat/completions",
        {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 65},
    )
    assert r.status_code == 400 and "cap of 64" in r.json()["error"]["message"]
    r = post(
        server, "/v1/chat/completions", {"model": "chat", "messages": [], "temperature": "hot"}
    )
    assert r.status_code == 400
    still_serving(server)


@pytest.mark.parametrize(
    "name, data, reason",
    [
        ("format", lambda: base64.b64encode(b"GIF89a" + b"\0" * 40).decode(), None),
        ("too-large", lambda: base64.b64encode(png() + b"\0" * 10_000_001).decode(), "too-large"),
        (
            "bomb",
            lambda: base64.b64encode(bomb()).decode(),
            "bomb",
        ),
        ("remote", lambda: "https://example.com/cat.png", "remote-off"),
    ],
)
def test_bad_images_are_400_with_the_validators_reason(server, name, data, reason):
    body = {"inputs": [{"name": "image", "shape": [1], "datatype": "BYTES", "data": [data()]}]}
    r = post(server, "/v2/models/img/infer", body, timeout=60)
    expected = 413 if name == "too-large" else 400  # over the 1 MB body limit before any check
    assert r.status_code == expected, r.text
    if expected == 400:
        assert r.json()["error"].startswith("image 1:")
        if reason:
            assert r.json()["code"] == reason
    still_serving(server)


def test_image_checks_use_validate_rules(server):
    from tunewright.vision import ImageRefused, check_image

    bad = b"\x89PNG\r\n\x1a\n" + b"\0" * 64  # a PNG signature, then nothing an image is made of
    with pytest.raises(ImageRefused) as refused:
        check_image(bad)
    body = {
        "inputs": [
            {
                "name": "image",
                "shape": [1],
                "datatype": "BYTES",
                "data": [base64.b64encode(bad).decode()],
            }
        ]
    }
    r = post(server, "/v2/models/img/infer", body)
    assert r.status_code == 400 and r.json()["code"] == refused.value.reason
    assert str(refused.value).split(" <")[0] in r.json()["error"]  # less the object's address
    r = post(
        server,
        "/v1/chat/completions",
        {
            "model": "chat",
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": data_url(png())}}],
                }
            ],
        },
    )
    assert r.status_code == 400 and "takes no images" in r.json()["error"]["message"]


def test_body_over_the_limit_is_413(server):
    r = post(
        server,
        "/v1/chat/completions",
        content=b"x" * (1024 * 1024 + 10),
        headers={**AUTH, "Content-Type": "application/json"},
    )
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    still_serving(server)


def test_api_key_is_required(server):
    body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    assert post(server, "/v1/chat/completions", body, headers={}).status_code == 401
    wrong = {"Authorization": "Bearer s3cret-kez"}
    r = post(server, "/v1/chat/completions", body, headers=wrong)
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server["url"] + "/metrics", timeout=10).status_code == 401
    assert httpx.get(server["url"] + "/v2/health/live", timeout=10).json() == {"live": True}


def test_more_requests_than_the_queue_holds_get_429(server):
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 40,
        "ignore_eos": True,
    }
    statuses, headers = [], []

    def one():
        r = post(server, "/v1/chat/completions", body, timeout=60)
        statuses.append(r.status_code)
        headers.append(r.headers.get("retry-after"))

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
        time.sleep(0.02)
    for t in threads:
        t.join(60)
    assert statuses.count(200) >= 3 and 429 in statuses, statuses
    assert all(h == "1" for s, h in zip(statuses, headers) if s == 429)
    still_serving(server)


def assert_stopped_early(server, cancelled_before: float, tokens_before: float, asked: int):
    """The chat generation was cancelled (within 10 s) before it made the ``asked`` tokens."""
    cancelled = "tunewright_serve_cancelled_generations_total"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if metric(server, cancelled, model="chat") > cancelled_before:
            break
        time.sleep(0.1)
    assert metric(server, cancelled, model="chat") > cancelled_before
    time.sleep(0.3)
    made = metric(server, "tunewright_serve_generated_tokens_total", model="chat") - tokens_before
    assert made < asked


def test_a_client_that_disconnects_stops_its_generation(server):
    before = metric(server, "tunewright_serve_cancelled_generations_total", model="chat")
    tokens = metric(server, "tunewright_serve_generated_tokens_total", model="chat")
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 60,
        "ignore_eos": True,
        "stream": True,
    }
    with httpx.stream(
        "POST", server["url"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=30
    ) as r:
        for line in r.iter_lines():
            if '"content"' in line and '"content": ""' not in line:
                break  # one token came: hang up
    assert_stopped_early(server, before, tokens, asked=60)
    assert metric(server, "tunewright_serve_queue_depth") == 0


def test_a_client_that_gives_up_on_a_non_streamed_answer_stops_its_generation(server):
    """No stream to fail a write on: the server notices the closed connection itself."""
    before = metric(server, "tunewright_serve_cancelled_generations_total", model="chat")
    tokens = metric(server, "tunewright_serve_generated_tokens_total", model="chat")
    gone = metric(server, "tunewright_serve_requests_total", model="chat", status="499")
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 60,
        "ignore_eos": True,
    }
    with pytest.raises(httpx.ReadTimeout):  # 60 tokens take 0.6 s or more (the step delay)
        post(server, "/v1/chat/completions", body, timeout=0.25)
    assert_stopped_early(server, before, tokens, asked=60)
    assert metric(server, "tunewright_serve_requests_total", model="chat", status="499") == gone + 1
    assert metric(server, "tunewright_serve_queue_depth") == 0


def validate(path: Path, task: str, capsys) -> dict:
    """``tunewright validate PATH --task TASK --json``, in this process (the tokenizer loads once)."""
    from tunewright.cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["validate", str(path), "--task", task, "--json"])
    return json.loads(capsys.readouterr().out)


# -- monitoring --------------------------------------------------------------------------------


def test_metrics_profile_and_drift(server, generator_bundle):
    manifest = json.loads((generator_bundle / "manifest.json").read_text())
    assert manifest["data_profile"]["prompt_tokens"]["quantiles"]["0.5"] > 0
    text = httpx.get(server["url"] + "/metrics", headers=AUTH, timeout=10).text
    for name in (
        'tunewright_serve_requests_total{endpoint="chat",model="chat",status="200"}',
        'tunewright_serve_errors_total{model="chat",status="400"}',
        "tunewright_serve_time_to_first_token_seconds_bucket",
        "tunewright_serve_request_seconds_bucket",
        'tunewright_serve_drift_psi{feature="prompt_tokens",model="chat"}',
        'tunewright_serve_drift_psi{feature="labels",model="cls"}',
    ):
        assert name in text, name
    profile = httpx.get(server["url"] + "/profile", headers=AUTH, timeout=10).json()
    assert profile["cls"]["training"]["labels"].keys() == {"neg", "pos"}
    assert profile["chat"]["psi"]["prompt_tokens"] >= 0


def test_recorded_exchanges_pass_validate(server, capsys):
    record = Path(server["record"])
    chats = [json.loads(line) for line in (record / "chat.jsonl").read_text().splitlines()]
    assert chats and chats[0]["messages"][-1]["role"] == "assistant"
    labelled = [json.loads(line) for line in (record / "cls.jsonl").read_text().splitlines()]
    assert {"text", "label"} <= labelled[0].keys()
    assert not (record / "img.jsonl").exists()  # no image bytes unless --record-images
    for name, task in (("chat.jsonl", "chat"), ("cls.jsonl", "classification")):
        report = validate(record / name, task, capsys)
        # every line is a usable example; the file-level findings (too few examples, one label
        # only) are about this test's handful of requests, not about the format
        lines = (record / name).read_text().count("\n")
        assert report["summary"]["examples"] == lines, report
        assert not [e for e in report["errors"] if e["location"] != str(record / name)], report


def test_a_public_bind_needs_a_key(generator_bundle):
    from tunewright.edge.runtime.serve.cli import main

    env = os.environ.pop("TUNEWRIGHT_API_KEY", None)
    try:
        assert main([str(generator_bundle), "--host", "0.0.0.0"]) == 2
    finally:
        if env is not None:
            os.environ["TUNEWRIGHT_API_KEY"] = env


def test_serve_imports_neither_torch_nor_transformers():
    code = (
        "import sys, tunewright.edge.runtime.serve.app, tunewright.edge.runtime.serve.cli, "
        "tunewright.vision; "
        "bad = [m for m in ('torch', 'transformers', 'optimum') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# -- image chat: the checks, on a stand-in for an image+text model ------------------------------


class _ImageChat:
    generates = True
    labels = None
    manifest = {"task_kind": "image_text_to_text"}


def _image_chat(allow_remote=False):
    from tunewright.edge.runtime.serve.app import ServedModel, ServeOptions, ServerState
    from tunewright.edge.runtime.serve.engine import Worker
    from tunewright.edge.runtime.serve.profile import LiveProfile

    model = ServedModel("vlm", Path("."), _ImageChat(), LiveProfile(None))
    state = ServerState({"vlm": model}, ServeOptions(allow_remote_images=allow_remote), Worker(2))
    return state, model


def _ask(state, model, *urls):
    from tunewright.edge.runtime.serve.app import ChatMessage, _prepare_messages

    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls]
    message = ChatMessage(role="user", content=[*parts, {"type": "text", "text": "what is it?"}])
    return _prepare_messages(state, model, [message])


@pytest.mark.parametrize(
    "urls, code",
    [
        (lambda: [data_url(png(), "image/jpeg")], "mismatch"),  # declared type against the bytes
        (
            lambda: [data_url(bomb())],
            "bomb",
        ),
        (lambda: [data_url(png())] * 11, "too-many-images"),
        (lambda: ["https://example.com/cat.png"], "remote-off"),
        (lambda: ["cat.png"], "reference"),
    ],
)
def test_image_parts_of_a_chat_are_checked_as_validate_checks_them(urls, code):
    from tunewright.edge.runtime.serve.app import ApiError
    from tunewright.vision import ImageRefused, check_reference

    state, model = _image_chat()
    with pytest.raises(ApiError) as refused:
        _ask(state, model, *urls())
    assert refused.value.status == 400
    if code not in ("too-many-images", "reference"):
        with pytest.raises(ImageRefused) as validator:
            check_reference(urls()[0])
        assert refused.value.code == validator.value.reason
    else:
        assert refused.value.code == code


def test_image_parts_of_a_chat_become_checked_images():
    from PIL import Image

    state, model = _image_chat()
    prepared, sent = _ask(state, model, data_url(png()))
    image = prepared[0]["content"][0]["image_url"]["url"]
    assert isinstance(image, Image.Image) and image.size == (8, 8)
    assert sent[0]["content"][0]["image_url"]["url"].startswith("data:image/png")


def test_edge_serve_is_a_tunewright_command(capsys):
    from tunewright.cli import main

    with pytest.raises(SystemExit) as done:
        main(["edge", "serve", "--help"])
    assert done.value.code == 0
    assert "--allow-remote-images" in capsys.readouterr().out


def test_the_playground_page_is_served_without_a_key_and_uses_the_api(server):
    page = httpx.get(server["url"] + "/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "/v1/chat/completions" in page.text and "/infer" in page.text
    assert "http" not in page.text.replace("HTTP ", "")  # nothing from the network (no CDN)


def _browser():
    """A headless Chromium driven by selenium, or a skip; a failure where ``.ci/run`` asked for
    the browser (``TUNEWRIGHT_REQUIRE_BROWSER=1``: it installs Debian's chromium and
    chromium-driver, and a CI run that lost them must not pass by skipping)."""
    import shutil

    required = os.environ.get("TUNEWRIGHT_REQUIRE_BROWSER") == "1"
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if webdriver is None or not chromium or not driver:
        missing = ", ".join(
            name
            for name, found in (
                ("selenium", webdriver),
                ("chromium", chromium),
                ("chromedriver", driver),
            )
            if not found
        )
        message = (
            f"the playground's browser test needs {missing} "
            "(apt-get install chromium chromium-driver; pip install selenium)"
        )
        if required:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def test_the_playground_streams_a_chat_answer_and_shows_probabilities_in_a_real_browser(server):
    """Headless Chromium types into the page as a person would: the streamed answer it assembles
    is the API's greedy answer to the same request, read from more than one server-sent event;
    a classifier's table shows the probabilities ``/infer`` gives."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    browser = _browser()
    try:
        browser.get(server["url"] + "/")
        browser.find_element(By.ID, "key").send_keys(KEY + "\t")  # onchange: lists the models
        wait = WebDriverWait(browser, 30)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#model option")) == 3)
        out = browser.find_element(By.ID, "out")

        Select(browser.find_element(By.ID, "model")).select_by_value("chat")
        for field, value in (("max", "12"), ("temp", "0")):
            box = browser.find_element(By.ID, field)
            box.clear()
            box.send_keys(value)
        browser.find_element(By.ID, "prompt").send_keys("Say something about the sea")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: out.get_attribute("data-done"))
        assert out.get_attribute("data-done") in ("stop", "length"), out.text
        shown = browser.execute_script("return document.getElementById('out').textContent")
        expected = post(
            server,
            "/v1/chat/completions",
            {
                "model": "chat",
                "messages": [{"role": "user", "content": "Say something about the sea"}],
                "max_tokens": 12,
                "temperature": 0,
            },
        ).json()
        assert shown == expected["choices"][0]["message"]["content"]
        # the role chunk, a chunk per piece of text and the finish: a stream, not one reply
        assert int(out.get_attribute("data-chunks")) >= 3

        Select(browser.find_element(By.ID, "model")).select_by_value("cls")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("the weather is fine today")
        browser.find_element(By.ID, "send").click()
        wait.until(lambda b: out.get_attribute("data-done"))
        assert out.get_attribute("data-done") == "classified", out.text
        rows = [
            [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
            for row in out.find_elements(By.TAG_NAME, "tr")
        ]
        infer = post(
            server,
            "/v2/models/cls/infer",
            {
                "inputs": [
                    {
                        "name": "text",
                        "shape": [1],
                        "datatype": "BYTES",
                        "data": ["the weather is fine today"],
                    }
                ]
            },
        ).json()
        probabilities = next(o for o in infer["outputs"] if o["name"] == "probabilities")["data"]
        assert [label for label, _ in rows] == infer["parameters"]["labels"]
        assert [float(p) for _, p in rows] == pytest.approx(probabilities, abs=5e-5)
    finally:
        browser.quit()


def test_zz_sigterm_finishes_requests_in_flight_and_exits_0(server):
    """Last: it stops the module's server."""
    proc = server["proc"]
    body = {
        "model": "chat",
        "messages": [{"role": "user", "content": "go"}],
        "max_tokens": 40,
        "ignore_eos": True,
    }
    answer = {}
    thread = threading.Thread(
        target=lambda: answer.update(r=post(server, "/v1/chat/completions", body, timeout=60))
    )
    thread.start()
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    thread.join(60)
    assert answer["r"].status_code == 200
    assert answer["r"].json()["usage"]["completion_tokens"] == 40
    assert proc.wait(30) == 0
    with pytest.raises(httpx.HTTPError):
        httpx.get(server["url"] + "/v2/health/live", timeout=2)
