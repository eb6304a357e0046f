"""Third-party output kept off the console: what export tools print goes to a buffer instead.

onnxruntime-genai's model builder prints a line per layer and a progress bar, optimum and
onnxruntime's quantizers print bars and warnings, some from C++ straight to file descriptors 1
and 2. An export shows its own progress (the ``log`` it is given) and nothing else, so every
exporter and quantizer runs inside :func:`captured_output`; what they printed is shown only
when they fail.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator


class Captured:
    """What a block printed, once it has ended."""

    def __init__(self) -> None:
        self.text = ""

    def tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines (progress bars' carriage returns split as lines too)."""
        rows = [row for row in self.text.replace("\r", "\n").splitlines() if row.strip()]
        return "\n".join(rows[-lines:])


@contextlib.contextmanager
def _descriptors(sink) -> Iterator[None]:
    """Point file descriptors 1 and 2 at ``sink`` (a file) for the block, then back."""
    saved = []
    try:
        for fd in (1, 2):
            saved.append((fd, os.dup(fd)))
            os.dup2(sink.fileno(), fd)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)


def _has_descriptors() -> bool:
    try:
        os.fstat(1)
        os.fstat(2)
    except OSError:
        return False
    return True


@contextlib.contextmanager
def captured_output() -> Iterator[Captured]:
    """Run the block with ``sys.stdout``, ``sys.stderr`` and file descriptors 1 and 2 writing to
    a buffer; yield a :class:`Captured` whose ``text`` holds what they wrote once the block ends
    (also when it raises)."""
    captured = Captured()
    python_side = io.StringIO()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            descriptors = _descriptors(sink) if _has_descriptors() else contextlib.nullcontext()
            with (
                descriptors,
                contextlib.redirect_stdout(python_side),
                contextlib.redirect_stderr(python_side),
            ):
                yield captured
        finally:
            sink.seek(0)
            captured.text = python_side.getvalue() + sink.read().decode("utf-8", errors="replace")


__all__ = ["captured_output", "Captured"]
