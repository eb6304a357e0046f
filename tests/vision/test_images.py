"""Image references: data URLs, paths inside the data folder, http(s) on a local server only."""

from __future__ import annotations

import base64
import http.server
import io
import os
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tunewright.vision import ImageRefused, VisionSettings, check_example, read_reference


def png_bytes(size=(16, 12)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def refusal(reference, **kwargs) -> ImageRefused:
    with pytest.raises(ImageRefused) as caught:
        read_reference(reference, **kwargs)
    return caught.value


# ---------------------------------------------------------------------------------------------
# Data URLs
# ---------------------------------------------------------------------------------------------


def test_data_url_base64_and_percent_encoded():
    data = png_bytes()
    source = read_reference("data:image/png;base64," + base64.b64encode(data).decode())
    assert (source.data, source.kind, source.declared_type) == (data, "data-url", "image/png")
    text = read_reference("data:image/svg+xml,%3Csvg%3E")
    assert text.data == b"<svg>" and text.declared_type == "image/svg+xml"


@pytest.mark.parametrize(
    "reference, reason",
    [
        ("data:image/png;base64", "data-url"),  # no comma
        ("data:image/png;base64,@@@@", "data-url"),  # not base64
        ("", "reference"),
        (None, "reference"),
        (42, "reference"),
        ("ftp://example.invalid/a.png", "reference"),
        ("file:///etc/passwd", "reference"),
    ],
)
def test_malformed_references(reference, reason):
    assert refusal(reference, root="/tmp").reason == reason


def test_oversized_data_url_is_refused_before_decoding():
    huge = "data:image/png;base64," + "A" * 4_000_000  # 3 MB once decoded
    error = refusal(huge, settings=VisionSettings(max_image_bytes=1_000_000))
    assert error.reason == "too-large" and "vision.max_image_bytes" in str(error)


# ---------------------------------------------------------------------------------------------
# Paths
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def data_folder(tmp_path) -> Path:
    folder = tmp_path / "data"
    (folder / "cats").mkdir(parents=True)
    (folder / "cats" / "1.png").write_bytes(png_bytes())
    (tmp_path / "secret.png").write_bytes(png_bytes())
    return folder


def test_relative_and_absolute_paths_inside_the_folder(data_folder):
    assert read_reference("cats/1.png", root=data_folder).data == png_bytes()
    assert read_reference("./cats/../cats/1.png", root=data_folder).kind == "path"
    assert read_reference(str(data_folder / "cats" / "1.png"), root=data_folder).data == png_bytes()


def test_paths_that_escape_the_folder_are_refused(data_folder, tmp_path):
    assert refusal("../secret.png", root=data_folder).reason == "escapes-folder"
    assert refusal(str(tmp_path / "secret.png"), root=data_folder).reason == "escapes-folder"
    assert refusal("/etc/hostname", root=data_folder).reason == "escapes-folder"


def test_symlinks_that_escape_are_refused_and_those_inside_are_fine(data_folder, tmp_path):
    os.symlink(tmp_path / "secret.png", data_folder / "cats" / "link.png")
    error = refusal("cats/link.png", root=data_folder)
    assert error.reason == "escapes-folder" and "symbolic link" in str(error)
    os.symlink(tmp_path, data_folder / "up")  # a linked folder on the way out
    assert refusal("up/secret.png", root=data_folder).reason == "escapes-folder"
    os.symlink("1.png", data_folder / "cats" / "same.png")
    assert read_reference("cats/same.png", root=data_folder).data == png_bytes()


def test_missing_files_folders_and_devices(data_folder):
    assert refusal("cats/2.png", root=data_folder).reason == "not-found"
    assert refusal("cats", root=data_folder).reason == "not-a-file"
    os.mkfifo(data_folder / "pipe.png")  # would block a plain open().read() forever
    assert refusal("pipe.png", root=data_folder).reason == "not-a-file"


def test_a_path_needs_a_folder_to_be_relative_to():
    error = refusal("cats/1.png", root=None)
    assert error.reason == "no-folder"


def test_large_files_are_refused_from_their_size(data_folder):
    big = data_folder / "big.png"
    with open(big, "wb") as handle:
        handle.truncate(3_000_000)  # sparse: nothing needs reading to know its size
    error = refusal("big.png", root=data_folder, settings=VisionSettings(max_image_bytes=2_000_000))
    assert error.reason == "too-large" and "3.0 MB" in str(error)


def test_check_example_resolves_against_the_data_files_folder(data_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (data_folder / "train.jsonl").write_text("{}\n")
    example = {"image": "cats/1.png", "label": "cat"}
    assert check_example(example, "data/train.jsonl:1") == []
    [problem] = check_example({"image": "../secret.png", "label": "cat"}, "data/train.jsonl:2")
    assert problem.reason == "escapes-folder" and problem.location == "data/train.jsonl:2"
    # a folder of images: the location names the folder itself
    assert check_example(example, "data:7") == []
    # a location that names no file says nothing about a folder
    assert check_example(example, "example 3")[0].reason == "no-folder"


# ---------------------------------------------------------------------------------------------
# http(s): a server on 127.0.0.1 started here; no other host is ever asked
# ---------------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    image = png_bytes((40, 30))

    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):
        if self.path == "/cat.png":
            self.send_response(200)
            self.send_header("Content-Type", "text/html")  # servers lie; the bytes decide
            self.send_header("Content-Length", str(len(self.image)))
            self.end_headers()
            self.wfile.write(self.image)
        elif self.path == "/endless":  # no Content-Length: the cap must hold while streaming
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(10_000):
                    self.wfile.write(b"\x00" * 65536)
            except (BrokenPipeError, ConnectionResetError):
                pass
        elif self.path == "/declared-huge":
            self.send_response(200)
            self.send_header("Content-Length", str(50_000_000))
            self.end_headers()
        elif self.path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            time.sleep(3)
        else:
            self.send_error(404, "Not Found")


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in (
        "http_proxy",
        "https_proxy",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
    ):
        monkeypatch.delenv(name, raising=False)


REMOTE = VisionSettings(allow_remote=True, remote_timeout=2)


def test_remote_images_are_off_unless_allowed(server):
    error = refusal(f"{server}/cat.png")
    assert error.reason == "remote-off" and "vision.allow_remote" in str(error)
    source = read_reference(f"{server}/cat.png", settings=REMOTE)
    assert source.data == Handler.image and source.kind == "url"
    assert check_example({"image": f"{server}/cat.png", "label": 1}, "d:1", REMOTE) == []


def test_remote_size_is_capped_while_streaming(server):
    capped = REMOTE.model_copy(update={"max_image_bytes": 1_000_000})
    started = time.monotonic()
    error = refusal(f"{server}/endless", settings=capped)
    assert error.reason == "too-large" and "stopped reading" in str(error)
    assert time.monotonic() - started < 2  # did not read the 650 MB the server offers
    declared = refusal(f"{server}/declared-huge", settings=capped)
    assert declared.reason == "too-large" and "50.0 MB" in str(declared)


def test_remote_timeout_404_and_refused_connection(server):
    slow = REMOTE.model_copy(update={"remote_timeout": 0.5})
    started = time.monotonic()
    error = refusal(f"{server}/slow", settings=slow)
    assert error.reason == "remote-failed" and "0.5 s" in str(error)
    assert time.monotonic() - started < 2.5
    missing = refusal(f"{server}/nothing.png", settings=REMOTE)
    assert missing.reason == "remote-failed" and "HTTP 404" in str(missing)
    with socket.socket() as probe:  # a port nobody listens on: what offline looks like locally
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = refusal(f"http://127.0.0.1:{port}/cat.png", settings=REMOTE)
    assert closed.reason == "remote-failed" and "refused" in str(closed)


def test_a_host_that_does_not_resolve_says_offline(monkeypatch):
    """What an offline machine's resolver answers (no DNS server is asked: getaddrinfo fails as it
    does there), through urllib's own error path."""

    def offline(*args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", offline)
    error = refusal("https://images.example.org/cat.png", settings=REMOTE)
    assert error.reason == "remote-failed"
    assert (
        "images.example.org/cat.png: the host name does not resolve: offline, or a wrong host"
        in str(error)
    )
    assert "data URLs and local paths work offline" in str(error)
