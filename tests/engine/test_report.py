"""report.png: what is drawn is what metrics.jsonl says (the figure's own lines, read back)."""

from __future__ import annotations

import json

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from tunewright.report import write_report

ROWS = [
    {"step": 0, "eval_loss": 2.0, "eval_accuracy": 0.30, "eval_stage": "baseline"},
    *({"step": s, "loss": 2.0 - 0.1 * s} for s in range(1, 9)),
    {"step": 4, "eval_loss": 1.5, "eval_accuracy": 0.55, "eval_stage": "training"},
    {"step": 8, "eval_loss": 1.2, "eval_accuracy": 0.70, "eval_stage": "final"},
]


@pytest.fixture
def drawn(monkeypatch):
    """The figure write_report draws, kept open when it would close it."""
    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    yield figures
    for fig in figures:
        close(fig)


def lines_by_label(ax) -> dict[str, tuple[list, list]]:
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def test_the_report_draws_the_logged_losses_metrics_and_baseline(tmp_path, drawn):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    path = write_report(tmp_path)
    assert path == tmp_path / "report.png" and not list(tmp_path.glob(".*.tmp"))
    assert Image.open(path).size == (1100, 400)
    (fig,) = drawn
    loss_ax, metric_ax = fig.axes
    loss = lines_by_label(loss_ax)
    steps, values = loss["train loss"]
    assert steps == list(range(1, 9)) and values == pytest.approx(
        [2.0 - 0.1 * s for s in range(1, 9)]
    )
    # the running mean of 5: the 5th point averages steps 1..5, the 8th steps 4..8
    assert loss["train loss (mean of 5)"][1][4] == pytest.approx(1.7) and loss[
        "train loss (mean of 5)"
    ][1][7] == pytest.approx(1.4)
    # validation loss from the baseline through the final evaluation, and the baseline dashed
    assert loss["validation loss"] == ([0, 4, 8], pytest.approx([2.0, 1.5, 1.2]))
    baseline = loss_ax.lines[
        [line.get_label() for line in loss_ax.lines].index("validation loss, baseline")
    ]
    assert baseline.get_linestyle() == "--" and list(baseline.get_ydata()) == [2.0, 2.0]
    metrics = lines_by_label(metric_ax)
    assert metrics["accuracy"] == ([0, 4, 8], pytest.approx([0.30, 0.55, 0.70]))
    assert "perplexity" not in metrics and "loss" not in metrics  # the loss is on the left


def test_a_run_without_held_out_data_says_so(tmp_path, drawn):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in range(1, 4))
    )
    write_report(tmp_path)
    (fig,) = drawn
    loss_ax, metric_ax = fig.axes
    assert set(lines_by_label(loss_ax)) == {"train loss", "train loss (mean of 5)"}
    assert not metric_ax.lines and "no held-out evaluation" in metric_ax.texts[0].get_text()
    assert write_report(tmp_path / "empty") is None  # nothing logged: no report


def test_the_final_figures_are_written_on_the_plot(tmp_path, drawn):
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    write_report(tmp_path)
    (fig,) = drawn
    loss_ax, metric_ax = fig.axes
    # the mean of the last 5 training losses (steps 4..8: 1.6 .. 1.2), the final evaluation and
    # its baseline
    assert loss_ax.texts[0].get_text() == (
        "final: train loss 1.4000 (mean of the last 5), validation loss 1.2000 (baseline 2.0000)"
    )
    assert metric_ax.texts[0].get_text() == "final: accuracy 0.7000 (baseline 0.3000)"
