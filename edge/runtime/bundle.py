"""Reading a bundle: the manifest, its format version and the hashes of every file.

A bundle is a folder with ``manifest.json`` beside the model files. The manifest lists every other
file with its sha256 and carries a hash of its own content, so a changed model file, a changed
tokenizer or an edited manifest are all refused before anything runs.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

#: The bundle format this runtime writes and reads. A bundle of a newer format is refused: its
#: files may mean something this runtime does not know.
FORMAT_VERSION = 1
FORMAT_NAME = "tunewright-bundle"
MANIFEST = "manifest.json"


class BundleError(Exception):
    """A bundle is missing, changed, or of a format this runtime cannot read.

    ``exit_code`` follows tunewright's convention: 2 for a bad bundle (bad input).
    """

    exit_code = 2


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_digest(manifest: dict) -> str:
    """The hash of a manifest's content without its own ``manifest_sha256`` field."""
    body = {key: value for key, value in manifest.items() if key != "manifest_sha256"}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    """Read and check ``manifest.json`` (format name and version); no file hashes yet."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise BundleError(f"{folder}: not a folder (a bundle is a folder with {MANIFEST})")
    if not path.is_file():
        raise BundleError(
            f"{folder}: no {MANIFEST}; this is not a tunewright bundle "
            "(or its export failed and left nothing)"
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc}); the manifest was damaged") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise BundleError(
            f"{path}: 'format' is {manifest.get('format') if isinstance(manifest, dict) else None!r}, "
            f"expected {FORMAT_NAME!r}"
        )
    version = manifest.get("format_version")
    if not isinstance(version, int):
        raise BundleError(f"{path}: 'format_version' is {version!r}, expected an integer")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version} is newer than this runtime reads "
            f"(up to {FORMAT_VERSION}); upgrade tunewright on this device, or export the bundle "
            "again with this version"
        )
    return manifest


def check_files(folder: str | Path, manifest: dict) -> list[str]:
    """Every problem with the bundle's files against the manifest (empty when it is whole)."""
    folder = Path(folder)
    problems = []
    recorded = manifest.get("manifest_sha256")
    if recorded != manifest_digest(manifest):
        problems.append(f"{MANIFEST}: its content does not match its recorded hash (it was edited)")
    files = manifest.get("files") or {}
    for name, entry in sorted(files.items()):
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
            continue
        if path.stat().st_size != entry.get("bytes"):
            problems.append(
                f"{name}: {path.stat().st_size} bytes, the manifest says {entry.get('bytes')}"
            )
        elif sha256_file(path) != entry.get("sha256"):
            problems.append(f"{name}: sha256 differs from the manifest (the file was changed)")
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and rel != MANIFEST and rel not in files:
            problems.append(f"{rel}: not listed in the manifest (added after export)")
    return problems


def open_bundle(folder: str | Path, *, verify: bool = True) -> dict[str, Any]:
    """Read the manifest and (by default) check every file's hash; raise :class:`BundleError`."""
    manifest = read_manifest(folder)
    if verify:
        problems = check_files(folder, manifest)
        if problems:
            raise BundleError(f"{folder}: refusing a changed bundle:\n  " + "\n  ".join(problems))
    return manifest
