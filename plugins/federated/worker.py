"""A deployed site keeps its prepared run in one process for the whole federation.

Flower's SuperNode starts a fresh ``flwr-clientapp`` process for every message. Were the model
trained in that process, every round would pay for importing torch, transformers and PEFT and for
preparing the run again (tens of seconds on a small machine, for seconds of training). Instead,
``tunewright federate site`` prepares the site once and serves it on a Unix socket in a private
folder (mode 0700); the ClientApp in each short-lived ``flwr-clientapp`` process is a thin
:class:`RemoteSite` that imports Flower and numpy only, forwards the message's arrays and config
to that socket and returns the reply.

One request at a time, framed as ``[8-byte length][JSON header][8-byte length][.npz arrays]``;
arrays travel as ``.npz`` without pickles. An error at the site comes back as its class name and
message, and is raised again in the ClientApp (so a refusal stays a refusal).
"""

from __future__ import annotations

import io
import json
import shutil
import socket
import struct
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

_LENGTH = struct.Struct("!Q")


class SiteFailed(Exception):
    """An error raised at the site; ``kind`` is its class name there."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _pack(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{k: np.ascontiguousarray(v) for k, v in arrays.items()})
    return buffer.getvalue()


def _unpack(data: bytes) -> dict[str, np.ndarray]:
    if not data:
        return {}
    with np.load(io.BytesIO(data), allow_pickle=False) as found:
        return {k: found[k] for k in found.files}


def _send(sock: socket.socket, header: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
    head = json.dumps(header).encode()
    body = _pack(arrays) if arrays else b""
    sock.sendall(_LENGTH.pack(len(head)) + head + _LENGTH.pack(len(body)) + body)


def _read(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise ConnectionError("the site's process closed the connection")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _receive(sock: socket.socket) -> tuple[dict, dict[str, np.ndarray]]:
    header = json.loads(_read(sock, _LENGTH.unpack(_read(sock, _LENGTH.size))[0]))
    arrays = _unpack(_read(sock, _LENGTH.unpack(_read(sock, _LENGTH.size))[0]))
    return header, arrays


class SiteServer:
    """Serve ``site`` (a :class:`site.Site`) on a Unix socket in a fresh private folder.

    ``start()`` returns the socket's path; ``close()`` stops serving and removes the folder.
    ``on_request(op, config)`` is called as each request starts (logs, tests), ``on_reply(op,
    config, reply)`` with the reply's header before it is sent."""

    def __init__(
        self,
        site: Any,
        on_request: Callable[[str, dict], None] | None = None,
        on_reply: Callable[[str, dict, dict], None] | None = None,
    ):
        self.site = site
        self.on_request = on_request or (lambda op, config: None)
        self.on_reply = on_reply or (lambda op, config, reply: None)
        self.folder = Path(tempfile.mkdtemp(prefix="tunewright-site-"))  # mkdtemp: mode 0700
        self.path = self.folder / "site.sock"
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._closing = threading.Event()

    def start(self) -> Path:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        self._sock.listen(4)
        self._sock.settimeout(0.5)
        self._thread = threading.Thread(target=self._serve, name="tunewright-site", daemon=True)
        self._thread.start()
        return self.path

    def _serve(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(None)
                try:
                    self._handle(conn)
                except (ConnectionError, OSError, ValueError):
                    continue  # the ClientApp went away (its process was stopped): wait for the next

    def _handle(self, conn: socket.socket) -> None:
        header, arrays = _receive(conn)
        op, config = header.get("op"), header.get("config", {})
        started = time.monotonic()
        try:
            self.on_request(op, config)
            if op == "fit":
                state, examples, metrics = self.site.fit(arrays, config)
                reply = {"ok": True, "examples": examples, "metrics": metrics}
            elif op == "evaluate":
                examples, metrics = self.site.evaluate(arrays, config)
                reply, state = {"ok": True, "examples": examples, "metrics": metrics}, None
            else:
                raise ValueError(f"unknown request {op!r}")
        except Exception as exc:  # sent back to the ClientApp, which turns it into an error reply
            reply, state = (
                {
                    "ok": False,
                    "kind": type(exc).__name__,
                    "error": str(exc),
                    "traceback": traceback.format_exc(limit=8),
                },
                None,
            )
        reply["site_seconds"] = time.monotonic() - started
        reply["load_seconds"] = float(getattr(self.site, "load_seconds", 0.0))
        self.on_reply(op, config, reply)
        _send(conn, reply, state)

    def close(self) -> None:
        self._closing.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


class RemoteSite:
    """The site as the ClientApp sees it: ``fit`` and ``evaluate`` forwarded to its process.

    ``timeout``: seconds to wait for an answer (the server's round deadline rides in each
    message's config as ``round-timeout``; past it the server has left this site out anyway)."""

    def __init__(self, path: str | Path, name: str, timeout: float = 3600.0):
        self.path = str(path)
        self.name = name
        self.timeout = timeout
        self.load_seconds = 0.0
        self.site_seconds = 0.0

    def _call(
        self, op: str, arrays: dict[str, np.ndarray], config: dict[str, Any]
    ) -> tuple[dict, dict[str, np.ndarray]]:
        timeout = float(config.get("round-timeout", self.timeout))
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            try:
                sock.connect(self.path)
                _send(sock, {"op": op, "config": config}, arrays)
                header, state = _receive(sock)
            except TimeoutError as exc:
                raise SiteFailed(
                    "TimeoutError", f"the site's process did not answer within {timeout:g} s"
                ) from exc
            except (FileNotFoundError, ConnectionError) as exc:
                raise SiteFailed(
                    "ConnectionError",
                    f"the site's process is not serving at {self.path} "
                    f"(was `tunewright federate site` stopped?): {exc}",
                ) from exc
        self.load_seconds = float(header.get("load_seconds", 0.0))
        self.site_seconds = float(header.get("site_seconds", 0.0))
        if not header.get("ok"):
            raise SiteFailed(
                str(header.get("kind", "Exception")), str(header.get("error", "unknown error"))
            )
        return header, state

    def fit(self, arrays: dict[str, np.ndarray], config: dict[str, Any]):
        header, state = self._call("fit", arrays, config)
        return state, int(header["examples"]), dict(header["metrics"])

    def evaluate(self, arrays: dict[str, np.ndarray], config: dict[str, Any]):
        header, _ = self._call("evaluate", arrays, config)
        return int(header["examples"]), dict(header["metrics"])
