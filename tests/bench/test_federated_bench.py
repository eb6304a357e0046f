"""bench/federated_bench.py in its quick mode: every side runs, and its figures agree with the runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "federated_bench.py"

pytestmark = pytest.mark.slow


def test_quick_run_reports_bytes_metrics_and_round_times(tmp_path):
    out = tmp_path / "fed.json"
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "FLWR_TELEMETRY_ENABLED": "0"}
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--no-deployment",
            "--json",
            str(out),
            "--keep",
            str(tmp_path / "work"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert (
        figures["total_steps"]
        == figures["rounds"] * figures["local_steps"] * figures["sites"]
        == 18
    )
    assert figures["centralized"]["steps"] == 18 and set(figures["site_alone"]) == {
        "site-0",
        "site-1",
        "site-2",
    }
    fedavg, ffa = figures["federated_fedavg"], figures["federated_ffa"]
    for scheme in (fedavg, ffa):
        sent = scheme["bytes"]["received_bytes_per_site_per_round"]
        assert scheme["bytes"]["full_model_over_adapter"] == pytest.approx(
            scheme["bytes"]["full_model_bytes"] / sent, rel=1e-2
        )
        assert len(scheme["simulation"]["round_seconds"]) == 2
        assert 0.0 <= scheme["simulation"]["not_training_share"] <= 1.0
    # FFA-LoRA sends B and the head, not A: about half of what fedavg sends
    assert (
        ffa["bytes"]["received_bytes_per_site_per_round"]
        < 0.7 * fedavg["bytes"]["received_bytes_per_site_per_round"]
    )
    # the bytes taken from the model alone are those the runs sent; float16 transfer halves them
    counted = figures["bytes"]
    for name, scheme in (("fedavg", fedavg), ("ffa", ffa)):
        assert (
            counted[f"{name}_float32"]["bytes_per_site_per_round_each_way"]
            == scheme["bytes"]["received_bytes_per_site_per_round"]
        )
        half = counted[f"{name}_float16"]["bytes_per_site_per_round_each_way"]
        # (a tiny model: Flower's header of ~190 bytes per array is a good part of each)
        assert 0.5 < half / counted[f"{name}_float32"]["bytes_per_site_per_round_each_way"] < 0.7
    # the gap is centralized minus federated, in points, from the runs' own final metrics
    metric = figures["metric"]
    for name, scheme in (("fedavg", fedavg), ("ffa", ffa)):
        expected = 100 * (figures["centralized"]["final"][metric] - scheme["final"][metric])
        assert figures["gap_points"][name] == pytest.approx(expected, abs=0.01)
    # fedavg through SecAgg+: the same training, unmasked to within the quantization, at the cost
    # of the protocol's keys, shares and masked integers
    secure = figures["federated_fedavg_secure"]
    assert secure["final"]["loss"] == pytest.approx(fedavg["final"]["loss"], rel=1e-3)
    assert (
        secure["bytes"]["sent_bytes_per_site_per_round"]
        > fedavg["bytes"]["sent_bytes_per_site_per_round"]
    )
    assert figures["gap_points"]["fedavg_secure"] == pytest.approx(
        100 * (figures["centralized"]["final"][metric] - secure["final"][metric]), abs=0.01
    )
    secure_rounds = (
        tmp_path / "work" / "federated-fedavg-secure" / "federated" / "rounds.jsonl"
    ).read_text()
    assert all(
        r["aggregated"] and {s["status"] for s in r["sites"]} == {"ok"}
        for r in map(json.loads, secure_rounds.splitlines())
    )
    run = tmp_path / "work" / "federated-fedavg"
    rounds = [
        json.loads(line) for line in (run / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2]
    assert "deployment" not in figures
