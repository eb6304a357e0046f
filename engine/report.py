"""``report.png``: training loss, and the held-out metrics from the baseline to the final
evaluation, from ``metrics.jsonl``.

Left: the training loss (its raw per-log values and a running mean, which is what to read on
small batches) and the validation loss at every evaluation. Right: every other held-out metric.
The baseline (before training) is drawn as a dashed reference line in both, and each panel says its
final figures in words (the running mean of the last training losses, the final evaluation against
the baseline), so that a reader need not read them off the curves.
"""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _running_mean(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def final_figures(rows: list[dict]) -> tuple[list[str], list[str]]:
    """The lines written on the loss panel and on the metrics panel: the training loss at the end
    (the mean of its last 5 logged values) and each held-out figure of the final evaluation with
    its baseline."""
    train = [r["loss"] for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    baseline = next((r for r in evals if r.get("eval_stage") == "baseline"), None) or {}
    after = [r for r in evals if r.get("eval_stage") != "baseline"]
    final = next((r for r in after if r.get("eval_stage") == "final"), after[-1] if after else {})
    losses: list[str] = []
    metrics: list[str] = []
    if train:
        losses.append(
            f"train loss {_running_mean(train, 5)[-1]:.4f} (mean of the last {min(5, len(train))})"
        )
    for key in sorted(
        k for k, v in final.items() if k.startswith("eval_") and isinstance(v, (int, float))
    ):
        if key == "eval_perplexity":
            continue
        line = f"{'validation loss' if key == 'eval_loss' else key[5:]} {final[key]:.4f}"
        if isinstance(baseline.get(key), (int, float)):
            line += f" (baseline {baseline[key]:.4f})"
        (losses if key == "eval_loss" else metrics).append(line)
    return losses, metrics


def _write_figures(ax, lines: list[str]) -> None:
    """The final figures between the panel's title and its plot, where no curve can hide them."""
    if lines:
        ax.text(
            0.5,
            1.02,
            "final: " + ", ".join(lines),
            transform=ax.transAxes,
            ha="center",
            va="bottom",
            fontsize=8,
            wrap=True,
        )
        ax.set_title(ax.get_title(), pad=18)


def write_report(run_dir: Path) -> Path | None:
    """Draw ``report.png`` into ``run_dir`` (atomically); ``None`` when nothing was logged."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return None
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    baseline = next((r for r in evals if r.get("eval_stage") == "baseline"), None)
    curve = [r for r in evals if r.get("eval_stage") != "baseline"]
    keys = sorted(
        {
            k
            for r in evals
            for k, v in r.items()
            if k.startswith("eval_") and isinstance(v, (int, float))
        }
    )
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    loss_ax, metric_ax = axes
    if train:
        steps, losses = zip(*train)
        loss_ax.plot(steps, losses, color="tab:blue", alpha=0.3, label="train loss")
        loss_ax.plot(
            steps, _running_mean(list(losses), 5), color="tab:blue", label="train loss (mean of 5)"
        )
    if "eval_loss" in keys:
        points = [
            (r["step"], r["eval_loss"])
            for r in ([baseline] if baseline else []) + curve
            if "eval_loss" in r
        ]
        loss_ax.plot(*zip(*points), "o-", color="tab:orange", label="validation loss")
        if baseline:
            loss_ax.axhline(
                baseline["eval_loss"],
                color="tab:orange",
                linestyle="--",
                linewidth=1,
                label="validation loss, baseline",
            )
    loss_ax.set_xlabel("step")
    loss_ax.set_title("loss")
    loss_ax.legend(fontsize=8)
    skip = {"eval_loss", "eval_perplexity"}
    for i, key in enumerate(k for k in keys if k not in skip):
        color = f"C{(i + 2) % 10}"
        points = [(r["step"], r[key]) for r in ([baseline] if baseline else []) + curve if key in r]
        metric_ax.plot(*zip(*points), "o-", color=color, label=key[5:])
        if baseline and key in baseline:
            metric_ax.axhline(baseline[key], color=color, linestyle="--", linewidth=1)
    metric_ax.set_xlabel("step")
    metric_ax.set_title("held-out metrics (dashed: baseline)")
    loss_lines, metric_lines = final_figures(rows)
    _write_figures(loss_ax, loss_lines)
    _write_figures(metric_ax, metric_lines)
    if metric_ax.lines:
        metric_ax.legend(fontsize=8)
    else:
        metric_ax.text(
            0.5, 0.5, "no held-out evaluation\n(set data.validation)", ha="center", va="center"
        )
    fig.tight_layout()
    path = Path(run_dir) / "report.png"
    tmp = path.with_name(".report.png.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
