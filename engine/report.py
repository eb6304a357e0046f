"""``report.png``: the loss curve and the evaluation metrics over steps, from metrics.jsonl."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def write_report(run_dir: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(run_dir)
    if not rows:
        return None
    train = [(r["step"], r["loss"]) for r in rows if "loss" in r]
    evals = [r for r in rows if any(k.startswith("eval_") for k in r)]
    eval_keys = sorted({k for r in evals for k in r if k.startswith("eval_") and k != "eval_tokens"})
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if train:
        axes[0].plot(*zip(*train), label="train loss")
    if evals and "eval_loss" in eval_keys:
        axes[0].plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="validation loss")
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    axes[0].legend()
    for key in eval_keys:
        if key in ("eval_loss", "eval_perplexity"):
            continue
        axes[1].plot([r["step"] for r in evals if key in r], [r[key] for r in evals if key in r], "o-", label=key[5:])
    axes[1].set_xlabel("step")
    axes[1].set_title("validation metrics")
    if axes[1].lines:
        axes[1].legend()
    else:
        axes[1].text(0.5, 0.5, "no evaluation during training\n(set training.eval_steps)", ha="center", va="center")
    fig.tight_layout()
    path = Path(run_dir) / "report.png"
    tmp = path.with_name(".report.png.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    tmp.replace(path)
    return path
