"""The deployed server's job: the Flower grid it runs on, seen by the federated runner, and the
job run without data of its own. Below both :mod:`apps` (whose ServerApp runs the job) and
:mod:`runner` (which reads the grid), so that neither imports the other for it."""

from __future__ import annotations

import contextvars
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tunewright import ConfigError, TrainResult, kinds

#: the grid of the deployed ServerApp that is running now, seen by the federated runner
_ACTIVE_GRID: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "tunewright_federated_grid", default=None
)


#: the names of the sites whose keys the server registered, by node id (their key files' names)
_SITE_NAMES: contextvars.ContextVar[dict[int, str] | None] = contextvars.ContextVar(
    "tunewright_federated_sites", default=None
)


@contextmanager
def active_grid(grid: Any, names: dict[int, str] | None = None) -> Iterator[None]:
    tokens = _ACTIVE_GRID.set(grid), _SITE_NAMES.set(dict(names or {}))
    try:
        yield
    finally:
        _ACTIVE_GRID.reset(tokens[0])
        _SITE_NAMES.reset(tokens[1])


def current_grid() -> Any:
    """The grid of a deployed ServerApp, or ``None`` (then the runner simulates)."""
    return _ACTIVE_GRID.get()


def site_names() -> dict[int, str]:
    """The deployed server's registered sites, node id to name (empty without site keys)."""
    return dict(_SITE_NAMES.get() or {})


def read_site_names(path: str | Path) -> dict[int, str]:
    """What :func:`deploy.serve_federation` wrote: ``{"node id": "name"}``."""
    try:
        return {int(k): str(v) for k, v in json.loads(Path(path).read_text()).items()}
    except (OSError, ValueError):
        return {}


def run_without_data(
    config: Any, pm: Any, *, overwrite: bool = False, echo: Any = None
) -> TrainResult:
    """A deployed server that reads no data (``federated.server.own_data: false``): the job through
    :func:`tunewright.run_job` with no data, so no baseline or final evaluation; the sites'
    evaluation of the final state is added to ``eval.json`` as ``final_sites``."""
    from tunewright import run_job

    settings = config.section("federated")
    task = pm.registries.get("tasks", config.task, key="task")
    if settings.labels is None and task.model_kind == kinds.SEQUENCE_CLASSIFICATION:
        raise ConfigError(
            "federated.labels: a server without data (federated.server.own_data: false) "
            f"of a {config.task} job needs the label set, in order, e.g. labels: [negative, positive]"
        )
    result = run_job(
        config, pm, overwrite=overwrite, echo=echo, with_data=False, labels=settings.labels
    )
    run_dir = Path(result.run_dir)
    records = [
        json.loads(line)
        for line in (run_dir / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    results = json.loads((run_dir / "eval.json").read_text())
    results.update(
        {"split": None, "final_sites": records[-1].get("evaluate", {}) if records else {}}
    )
    tmp = run_dir / ".eval.json.tmp"
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(run_dir / "eval.json")
    return result
