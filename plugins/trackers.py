"""The ``jsonl`` tracker: one JSON line per logged step or evaluation in ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from tunewright import Run, hookimpl


class JsonlTracker:
    """Appends to ``<run_dir>/metrics.jsonl``.

    A resumed run (``run.resume_from`` set) keeps every line logged up to ``run.start_step``, the
    baseline's included, and drops those past it, which the run trains and logs again: every step
    appears once. The kept lines replace the file atomically (a crash while resuming loses
    nothing), and a last line cut short by a killed process is dropped rather than read."""

    def __init__(self, run: Run):
        self.path = Path(run.run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if run.resume_from is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text(encoding="utf-8").splitlines()
                if _step(line) is not None and _step(line) <= run.start_step
            ]
            staging = self.path.with_name(f".{self.path.name}.tmp")
            staging.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
            staging.replace(self.path)
        self.handle = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        self.handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def _step(line: str) -> int | None:
    """The step of one line of metrics.jsonl; ``None`` for a line that is not a whole record."""
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError, TypeError):
        return None


@hookimpl(trylast=True)
def register_trackers(register):
    register("jsonl", JsonlTracker)
