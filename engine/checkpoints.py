"""Where a run's checkpoints are and which step each holds: what both preparing a run (``--resume``
needs the last one) and training (which writes them) know, without torch."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"
#: the file a checkpoint's folder holds last: a folder without it is not a checkpoint
STATE_FILE = "state.json"


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint of a run directory, or ``None``."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return None
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir()
        and p.name.startswith(CHECKPOINT_PREFIX)
        and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
        and (p / STATE_FILE).is_file()
    ]
    return max(found, key=checkpoint_step) if found else None


def checkpoint_step(path: str | Path | None) -> int:
    """The step a checkpoint folder holds (``checkpoint-40`` -> 40); 0 for ``None``."""
    return int(Path(path).name[len(CHECKPOINT_PREFIX) :]) if path else 0


__all__ = ["last_checkpoint", "checkpoint_step", "CHECKPOINT_PREFIX", "STATE_FILE"]
