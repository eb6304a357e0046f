"""Reading a data file (or folder) with a registered dataset format.

The core knows no format by name: formats come from the ``dataset_formats`` registry. With
``format: auto`` the formats that read the file's suffix (or, for a folder, the formats that read
folders) are asked about the first record one of them recognises; a later line that another of
them would recognise is reported as a mix.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import DataError, PluginError
from ..types import DatasetFormat, Problem, optional

_UTF16_32_BOMS = (b"\xff\xfe", b"\xfe\xff", b"\x00\x00\xfe\xff")


@dataclass
class ReadFile:
    """What was read from one file: the examples that could be read, where each came from
    (``"path:line"``), a :class:`Problem` per line that could not be, the format that read it, and
    ``fatal``: the file-level problem when nothing could be read at all."""

    source: str
    examples: list[dict] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    format: str | None = None
    fatal: Problem | None = None

    @property
    def readable(self) -> bool:
        return self.fatal is None


def read_examples(
    path: str | Path, registries: Any, format: str = "auto"
) -> tuple[list[dict], list[str], list[Problem]]:
    """Read one data file with a registered dataset format.

    Returns ``(examples, locations, problems)``. ``format`` is a registered format name, or
    ``"auto"``. Raises :class:`tunewright.DataError` for a file that cannot be read at all
    (missing, empty, not UTF-8 text, a suffix no format reads) and :class:`tunewright.ConfigError`
    for an unknown format name.
    """
    read = read_file(path, registries, format)
    if read.fatal is not None:
        raise DataError(str(read.fatal))
    return read.examples, read.locations, read.problems


def _reads_folders(fmt: Any) -> bool:
    return bool(optional(fmt, DatasetFormat, "directory", False))


def read_file(path: str | Path, registries: Any, format: str = "auto") -> ReadFile:
    """:func:`read_examples` that returns a :class:`ReadFile` instead of raising for a file that
    cannot be read, so that every file of a job can be reported at once."""
    registries = getattr(registries, "registries", registries)  # a plugin manager will do
    shown = str(path)
    result = ReadFile(shown)
    path = Path(path)
    formats = registries.kind("dataset_formats")
    suffixes = sorted({s.lower() for f in formats.values() for s in f.suffixes})
    folders = sorted(name for name, f in formats.items() if _reads_folders(f))
    expected = (
        f"expected a data file ending in {', '.join(suffixes) or '(no format is registered)'}"
    )
    if folders:
        expected += f", or a folder read by {', '.join(folders)}"

    def fatal(message: str, where: str = shown) -> ReadFile:
        result.fatal = Problem(where, message)
        return result

    if not path.exists():
        return fatal(f"file not found{_near_files(path)} ({expected})")
    if format != "auto":
        chosen = registries.get("dataset_formats", format, key="data.format")
        candidates = [(format, chosen)]
        if path.is_dir() != _reads_folders(chosen):
            what = "a folder" if path.is_dir() else "a file"
            return fatal(
                f"is {what}, and data.format {format!r} reads "
                f"{'folders' if _reads_folders(chosen) else 'files'} ({expected})"
            )
    elif path.is_dir():
        candidates = [(name, f) for name, f in formats.items() if _reads_folders(f)]
        if not candidates:
            return fatal(f"is a directory, not a data file ({expected})")
    else:
        suffix = path.suffix.lower()
        candidates = [
            (name, f)
            for name, f in formats.items()
            if not _reads_folders(f) and suffix in {s.lower() for s in f.suffixes}
        ]
        if not candidates:
            return fatal(
                f"cannot tell the format of a {suffix or 'suffix-less'!r} file ({expected}; "
                f"or set data.format to one of: {', '.join(sorted(formats)) or 'none'})"
            )
    if not path.is_dir():
        problem = _check_text_file(path, shown, expected)
        if problem is not None:
            result.fatal = problem
            return result
    chosen_name, chosen = candidates[0]

    records = _read_records(chosen, chosen_name, path, registries)
    if not records:
        return fatal(
            f"the {'folder' if path.is_dir() else 'file'} is empty: it holds no records ({expected})"
        )

    detected_line = None
    if len(candidates) > 1:
        for number, record in records:
            if isinstance(record, DataError):
                continue
            match = next(((n, f) for n, f in candidates if _detects(f, record)), None)
            if match is not None:
                detected_line = number
                if type(match[1]).read is not type(chosen).read:
                    records = _read_records(match[1], match[0], path, registries)
                chosen_name, chosen = match
                break
    result.format = chosen_name

    for number, record in records:
        location = f"{shown}:{number}"
        if isinstance(record, DataError):
            result.problems.append(Problem(location, str(record)))
            continue
        if detected_line is None and len(candidates) > 1:
            result.problems.append(Problem(location, _no_format_message(record, candidates, path)))
            continue
        if detected_line is not None and not _detects(chosen, record):
            others = [n for n, f in candidates if f is not chosen and _detects(f, record)]
            if others:
                result.problems.append(
                    Problem(
                        location,
                        (
                            f"this line is {others[0]} data, but the file was read as {chosen_name} "
                            f"(recognised at line {detected_line}); one file holds one format: convert "
                            "the line or move it to a file of its own"
                        ),
                    )
                )
                continue
        try:
            example = chosen.to_example(record)
        except DataError as exc:
            result.problems.append(Problem(location, str(exc)))
            continue
        except Exception as exc:  # a bug in the format, not in the data
            raise PluginError(
                f"{_owner(registries, chosen_name)} failed to convert {location}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        result.examples.append(example)
        result.locations.append(location)
    return result


def _check_text_file(path: Path, shown: str, expected: str) -> Problem | None:
    try:
        with open(path, "rb") as handle:
            head = handle.read(4096)
    except OSError as exc:
        return Problem(shown, f"cannot be read: {exc.strerror or exc}")
    if not head.strip():
        return Problem(shown, f"the file is empty ({expected})")
    if head.startswith(_UTF16_32_BOMS):
        return Problem(f"{shown}:1", "the file is UTF-16 or UTF-32 text; save it as UTF-8")
    if b"\x00" in head:
        line = head[: head.index(b"\x00")].count(b"\n") + 1
        return Problem(
            f"{shown}:{line}",
            "the file holds NUL bytes: binary data or UTF-16 text "
            "without a byte-order mark (expected UTF-8 text)",
        )
    return None


def _read_records(fmt: Any, name: str, path: Path, registries: Any) -> list[tuple[int, Any]]:
    try:
        return list(fmt.read(path))
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc.strerror or exc}") from exc
    except DataError:
        raise
    except Exception as exc:
        raise PluginError(
            f"{_owner(registries, name)} failed to read {path}: {type(exc).__name__}: {exc}"
        ) from exc


def _owner(registries: Any, name: str) -> str:
    try:
        return f"dataset format {name!r} (plugin {registries.owner('dataset_formats', name)!r})"
    except KeyError:
        return f"dataset format {name!r}"


def _detects(fmt: Any, record: Any) -> bool:
    detect = optional(fmt, DatasetFormat, "detect")
    try:
        if callable(detect):
            return bool(detect(record))
        fmt.to_example(record)
        return True
    except Exception:
        return False


def _no_format_message(record: Any, candidates: list, path: Path) -> str:
    keys = (
        ", ".join(map(str, record))
        if isinstance(record, dict)
        else f"a JSON {type(record).__name__}"
    )
    wanted = "; ".join(
        f"{name}: {optional(f, DatasetFormat, 'description') or name}" for name, f in candidates
    )
    return (
        f"no format for {path.suffix} files takes this record (found: {keys}); "
        f"expected one of {wanted}"
    )


def _near_files(path: Path) -> str:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        return f" (the folder {folder} does not exist either)"
    try:
        names = [p.name for p in folder.iterdir()]
    except OSError:
        return ""
    near = difflib.get_close_matches(path.name, names, n=1, cutoff=0.85)
    return f"; did you mean {str(folder / near[0])!r}?" if near else ""


def task_for_file(path: str | Path, registries: Any, format: str = "auto") -> str | None:
    """The task a data file's examples are for, as its format says (``task_for``), or ``None``.

    Used by ``tunewright validate`` without ``--task``. Raises like :func:`read_examples` when the
    file cannot be read at all.
    """
    read = read_file(path, registries, format)
    if read.fatal is not None:
        raise DataError(str(read.fatal))
    if read.format is None:
        return None
    fmt = registries.kind("dataset_formats")[read.format]
    task_for = optional(fmt, DatasetFormat, "task_for")
    return task_for(read.examples) if callable(task_for) else None


__all__ = ["ReadFile", "read_examples", "read_file", "task_for_file"]
