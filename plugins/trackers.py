"""The ``jsonl`` tracker: one JSON line per logged step or evaluation in ``metrics.jsonl``."""

from __future__ import annotations

import json
from pathlib import Path

from tunewright import hookimpl


class JsonlTracker:
    """Appends to ``<run_dir>/metrics.jsonl``. A resumed run repeats the steps after its
    checkpoint, so what was logged past ``run.start_step`` is dropped first: every step appears
    once."""

    def __init__(self, run):
        self.path = Path(run.run_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if run.start_step and self.path.exists():
            lines = self.path.read_text(encoding="utf-8").splitlines()
            kept = [line for line in lines if line.strip() and json.loads(line).get("step", 0) <= run.start_step]
        self.path.write_text("".join(f"{line}\n" for line in kept), encoding="utf-8")
        self.handle = self.path.open("a", encoding="utf-8")

    def log(self, step: int, metrics: dict) -> None:
        self.handle.write(json.dumps({"step": step, **metrics}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


@hookimpl(trylast=True)
def register_trackers(register):
    register("jsonl", JsonlTracker)
