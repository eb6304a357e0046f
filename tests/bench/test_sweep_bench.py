"""bench/sweep_bench.py in its quick mode: the default, both sweeps and the figures that compare them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "sweep_bench.py"

pytestmark = pytest.mark.slow

pytest.importorskip("optuna")


def test_quick_sweep_bench_reports_both_sweeps_against_the_default(tiny_llama_dir, tmp_path):
    spec = importlib.util.spec_from_file_location("sweep_bench", SCRIPT)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "sweep.json"
    figures = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_llama_dir),
            "--workdir",
            str(tmp_path / "w"),
            "--json",
            str(out),
        ]
    )
    assert out.exists()
    assert figures["default"]["steps"] == 4
    for side in ("unpruned", "pruned"):
        assert figures[side]["trials"] == 3 and figures[side]["failed"] == 0
        assert figures[side]["best_loss"] > 0 and figures[side]["steps"] >= 2 * 3
    assert figures["unpruned"]["pruned"] == 0
    # every trial of the unpruned sweep trains its own max_steps, drawn from 2..6
    assert figures["unpruned"]["steps"] <= 6 * 3
    saved = 1 - figures["pruned"]["steps"] / figures["unpruned"]["steps"]
    assert figures["pruning_saves"] == round(saved, 3)
    assert isinstance(figures["beats_default"], bool)

    # the replay of the unpruned sweep's trials through each pruner, without training: while TPE
    # still samples at random (its first 10 trials), the pruned sweep saw the same trials, so the
    # replayed Hyperband stops them exactly where the real one did
    replayed = bench.main(
        [
            "--quick",
            "--model",
            str(tiny_llama_dir),
            "--workdir",
            str(tmp_path / "r"),
            "--replay",
            str(tmp_path / "w" / "sweep-unpruned"),
        ]
    )
    assert replayed["steps"] == figures["unpruned"]["steps"] and replayed["trials"] == 3
    assert replayed["hyperband"]["steps"] == figures["pruned"]["steps"]
    # the median rule prunes nothing before 3 trials have finished
    assert replayed["median"]["saves"] == 0 and replayed["median"]["stopped"] == []
    # a replay keeps some of the same trials: never a better best than all of them
    assert replayed["hyperband"]["best_loss"] >= figures["unpruned"]["best_loss"]
