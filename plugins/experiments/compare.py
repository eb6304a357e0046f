"""``tunewright runs compare``: runs side by side, read from their folders alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import yaml

from tunewright import RUN_MARKER, UsageError

from .trackers import flatten


def expand(paths: list[Path]) -> list[Path]:
    """Run folders; a sweep folder stands for each of its trials."""
    found: list[Path] = []
    for path in paths:
        if (path / "trials").is_dir() and not (path / "config.yaml").exists():
            trials = sorted(p for p in (path / "trials").iterdir() if (p / "config.yaml").exists())
            if not trials:
                raise UsageError(f"{path}: a sweep folder without a trial run")
            found += trials
        elif (path / "config.yaml").is_file() and (
            (path / RUN_MARKER).exists() or (path / "eval.json").exists()
        ):
            found.append(path)
        else:
            raise UsageError(f"{path}: not a run directory (no config.yaml) nor a sweep folder")
    return found


def _curve(run: Path, metric: str) -> list[tuple[int, float]]:
    path = run / "metrics.jsonl"
    if not path.exists():
        return []
    curve = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        value = row.get(f"eval_{metric}")
        if isinstance(value, (int, float)) and "step" in row:
            curve[int(row["step"])] = float(value)
    return sorted(curve.items())


def compare_runs(paths: list[Path]) -> dict[str, Any]:
    runs = expand(paths)
    configs = {}
    for run in runs:
        config = flatten(yaml.safe_load((run / "config.yaml").read_text()) or {})
        config.pop("output", None)
        configs[str(run)] = config
    keys = sorted({k for c in configs.values() for k in c})
    differ = [
        k for k in keys if len({json.dumps(c.get(k), default=str) for c in configs.values()}) > 1
    ]
    rows = []
    for run in runs:
        results = {}
        if (run / "eval.json").exists():
            results = json.loads((run / "eval.json").read_text())
        metric = results.get("primary_metric")
        rows.append(
            {
                "run": str(run),
                "config": {k: configs[str(run)].get(k) for k in differ},
                "primary_metric": metric,
                "baseline": results.get("baseline", {}),
                "final": results.get("final", {}),
                "finished": "final" in results,
                "curve": _curve(run, metric) if metric else [],
            }
        )
    return {"differing_keys": differ, "runs": rows}


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def format_comparison(comparison: dict[str, Any]) -> str:
    rows = comparison["runs"]
    metrics = sorted({m for r in rows for m in (*r["baseline"], *r["final"])})
    header = ["run", *comparison["differing_keys"]]
    header += [f"{m} baseline" for m in metrics] + [f"{m} final" for m in metrics]
    lines = [header]
    for r in rows:
        lines.append(
            [
                Path(r["run"]).name if len(rows) > 1 else r["run"],
                *[_cell(r["config"].get(k)) for k in comparison["differing_keys"]],
                *[_cell(r["baseline"].get(m)) for m in metrics],
                *[_cell(r["final"].get(m)) if r["finished"] else "(unfinished)" for m in metrics],
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    table = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines
    )
    if not comparison["differing_keys"]:
        table += "\n(the runs' configs are the same, output aside)"
    return table


def plot_curves(comparison: dict[str, Any], path: Path) -> Path:
    """Each run's held-out primary metric against the step, on one set of axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    metrics = set()
    for r in comparison["runs"]:
        if r["curve"]:
            steps, values = zip(*r["curve"])
            ax.plot(steps, values, marker="o", markersize=3, label=Path(r["run"]).name)
            metrics.add(r["primary_metric"])
    ax.set_xlabel("step")
    ax.set_ylabel(" / ".join(sorted(metrics)) or "held-out metric")
    ax.set_title("validation curves")
    ax.grid(alpha=0.3)
    if metrics:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(staging, dpi=100)
    plt.close(fig)
    staging.replace(path)
    return path
