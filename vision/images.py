"""Image references: from what an example says (a data URL, a path, an http(s) URL) to bytes.

============================  ==============================================================
reference                     how it is read
============================  ==============================================================
``data:image/png;base64,...`` decoded in memory; the declared type is kept so that the checks
                              can refuse one that disagrees with the bytes
``cats/1.png``                a path relative to the data file's folder (``root``); absolute
                              paths are allowed inside that folder. A path, or a symbolic link
                              anywhere on the way, that leads outside the folder is refused
``https://host/cat.jpg``      fetched only when ``vision.allow_remote`` is set, with
                              ``vision.remote_timeout`` for the whole fetch, and refused as soon
                              as more than ``vision.max_image_bytes`` arrived (read in chunks,
                              never whole into memory first)
============================  ==============================================================

Every refusal is an :class:`~tunewright.vision.ImageRefused` whose message says what is wrong
and what is allowed. The file name, the URL's path and the HTTP ``Content-Type`` say nothing
about the format: the checks read it from the bytes.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .errors import ImageRefused
from .settings import VisionSettings, settings_of

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")
_CHUNK = 64 * 1024
ALLOWED_REFERENCES = (
    "a data URL (data:image/png;base64,...), a path inside the data file's "
    "folder, or an http(s) URL when vision.allow_remote is set"
)


@dataclass(frozen=True)
class ImageSource:
    """The bytes of one referenced image. ``kind`` is ``"data-url"``, ``"path"`` or ``"url"``;
    ``declared_type`` is the media type a data URL declares (``None`` otherwise); ``shown`` is the
    reference shortened for messages."""

    data: bytes
    kind: Literal["data-url", "path", "url"]
    declared_type: str | None
    shown: str


def shorten(reference: Any, limit: int = 60) -> str:
    """The reference as a message shows it: a data URL by its type and size, long text cut."""
    if not isinstance(reference, str):
        return repr(reference)[:limit]
    if reference[:5].lower() == "data:":
        head = reference[5:].split(",", 1)[0]
        return f"data:{head},... ({len(reference):,} characters)"
    return reference if len(reference) <= limit else reference[: limit - 3] + "..."


def reference_kind(reference: str) -> Literal["data-url", "path", "url"]:
    """What a reference string is, without reading it (an unsupported scheme counts as ``url``)."""
    if reference[:5].lower() == "data:":
        return "data-url"
    match = _SCHEME.match(reference)
    # one letter before ':' would be a drive letter; Linux paths may contain ':' anyway
    if match and len(match.group(1)) > 1 and reference[match.end() : match.end() + 2] == "//":
        return "url"
    return "path"


def read_reference(
    reference: Any, *, root: str | Path | None = None, settings: VisionSettings | Any = None
) -> ImageSource:
    """Read the bytes a reference points to, refusing (:class:`ImageRefused`) what the rules above
    do not allow. ``root`` is the data file's folder (``None``: paths are refused, since nothing
    says what they are relative to); ``settings`` a :class:`VisionSettings`, a job config or
    ``None`` (the defaults)."""
    settings = settings_of(settings)
    if not isinstance(reference, str) or not reference.strip():
        raise ImageRefused(
            "reference",
            f"the image reference must be text, got {shorten(reference)} "
            f"(allowed: {ALLOWED_REFERENCES})",
        )
    reference = reference.strip()
    kind = reference_kind(reference)
    if kind == "data-url":
        return _read_data_url(reference, settings)
    if kind == "url":
        scheme = _SCHEME.match(reference).group(1).lower()
        if scheme not in ("http", "https"):
            raise ImageRefused(
                "reference", f"{scheme}: URLs are not read (allowed: {ALLOWED_REFERENCES})"
            )
        return _fetch(reference, settings)
    return _read_path(reference, root, settings)


# ---------------------------------------------------------------------------------------------
# Data URLs
# ---------------------------------------------------------------------------------------------


def _read_data_url(reference: str, settings: VisionSettings) -> ImageSource:
    shown = shorten(reference)
    header, comma, payload = reference[5:].partition(",")
    if not comma:
        raise ImageRefused(
            "data-url",
            "the data URL has no ',' before its data (expected data:image/png;base64,<data>)",
        )
    params = [p.strip() for p in header.split(";")]
    is_base64 = len(params) > 1 and params[-1].lower() == "base64"
    declared = params[0].lower() or None
    limit = settings.max_image_bytes
    if is_base64:
        payload = re.sub(r"\s+", "", payload)
        if len(payload) // 4 * 3 > limit + 2:  # refuse before decoding a huge payload
            raise ImageRefused("too-large", _too_large(len(payload) // 4 * 3, limit, about=True))
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ImageRefused(
                "data-url", f"the data URL's base64 does not decode ({exc})"
            ) from exc
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > limit:
        raise ImageRefused("too-large", _too_large(len(data), limit))
    return ImageSource(data, "data-url", declared, shown)


# ---------------------------------------------------------------------------------------------
# Local paths
# ---------------------------------------------------------------------------------------------


def _read_path(reference: str, root: str | Path | None, settings: VisionSettings) -> ImageSource:
    if root is None:
        raise ImageRefused(
            "no-folder",
            f"{reference} is a path, but nothing says which folder it is "
            "relative to (allowed here: a data URL, or an example read "
            "from a data file, whose folder paths are relative to)",
        )
    folder = os.path.realpath(root)
    joined = os.path.normpath(os.path.join(folder, reference))
    target = os.path.realpath(joined)
    if not _inside(joined, folder):
        raise ImageRefused(
            "escapes-folder",
            f"{reference} leads outside the data folder {folder} "
            "(allowed: paths inside the folder of the data file)",
        )
    if not _inside(target, folder):
        raise ImageRefused(
            "escapes-folder",
            f"{reference} is a symbolic link to {target}, outside the "
            f"data folder {folder} (allowed: files inside the folder "
            "of the data file)",
        )
    try:
        info = os.stat(target)
    except FileNotFoundError:
        raise ImageRefused("not-found", f"{reference}: no such file in {folder}") from None
    except OSError as exc:
        raise ImageRefused(
            "not-found", f"{reference} cannot be read: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        raise ImageRefused("not-a-file", f"{reference} is {what} (expected an image file)")
    limit = settings.max_image_bytes
    if info.st_size > limit:
        raise ImageRefused("too-large", _too_large(info.st_size, limit))
    try:
        with open(target, "rb") as handle:
            data = handle.read(limit + 1)
    except OSError as exc:
        raise ImageRefused(
            "not-found", f"{reference} cannot be read: {exc.strerror or exc}"
        ) from exc
    if len(data) > limit:  # grew since stat
        raise ImageRefused("too-large", _too_large(len(data), limit, about=True))
    return ImageSource(data, "path", None, reference)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


# ---------------------------------------------------------------------------------------------
# Remote URLs
# ---------------------------------------------------------------------------------------------


def _fetch(url: str, settings: VisionSettings) -> ImageSource:
    shown = shorten(url)
    if not settings.allow_remote:
        raise ImageRefused(
            "remote-off",
            "remote images are not fetched unless vision.allow_remote "
            "is true (allowed now: data URLs and paths inside the "
            "data folder)",
        )
    limit, timeout = settings.max_image_bytes, settings.remote_timeout
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url, headers={"User-Agent": "tunewright", "Accept": "image/*"})
    chunks: list[bytes] = []
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length and length.isdigit() and int(length) > limit:
                raise ImageRefused("too-large", _too_large(int(length), limit))
            while True:
                chunk = response.read(_CHUNK)
                if not chunk:
                    break
                received += len(chunk)
                if received > limit:
                    raise ImageRefused(
                        "too-large",
                        "more than "
                        + _too_large(received, limit, about=True)
                        + " (stopped reading)",
                    )
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise ImageRefused(
                        "remote-failed",
                        f"{shown}: not fetched within vision.remote_timeout {timeout:g} s",
                    )
    except ImageRefused:
        raise
    except urllib.error.HTTPError as exc:
        raise ImageRefused(
            "remote-failed",
            f"{shown}: the server answered HTTP {exc.code} "
            f"{exc.reason} (expected 200 with the image)",
        ) from None
    except urllib.error.URLError as exc:
        raise ImageRefused(
            "remote-failed", f"{shown}: {_network_reason(exc.reason, timeout)}"
        ) from None
    except TimeoutError:
        raise ImageRefused(
            "remote-failed", f"{shown}: no answer within vision.remote_timeout {timeout:g} s"
        ) from None
    except OSError as exc:
        raise ImageRefused("remote-failed", f"{shown}: {_network_reason(exc, timeout)}") from None
    return ImageSource(b"".join(chunks), "url", None, shown)


def _network_reason(reason: Any, timeout: float) -> str:
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return f"no answer within vision.remote_timeout {timeout:g} s"
    if isinstance(reason, socket.gaierror):
        return (
            "the host name does not resolve: offline, or a wrong host (data URLs and local "
            "paths work offline)"
        )
    if isinstance(reason, ConnectionRefusedError):
        return "the connection was refused (is the server up?)"
    text = getattr(reason, "strerror", None) or str(reason)
    return f"cannot be fetched: {text} (offline? data URLs and local paths work offline)"


def _too_large(size: int, limit: int, about: bool = False) -> str:
    return (
        f"{'about ' if about else ''}{_megabytes(size)}, larger than vision.max_image_bytes "
        f"{_megabytes(limit)} (allowed: at most {limit:,} bytes per image)"
    )


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size:,} bytes"


__all__ = ["ImageSource", "read_reference", "reference_kind", "shorten", "ALLOWED_REFERENCES"]
