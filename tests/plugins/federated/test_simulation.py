"""``tunewright federate CONFIG``: a real federated job in Flower's simulation engine on a tiny
encoder, ending in a run directory that ``tunewright eval`` and ``tunewright export`` take as they
take a local run's."""

import json
import signal
import subprocess
import sys

import pytest
from federated_jobs import federated_config, sentiment_rows, wait_until, write_jsonl

from tunewright.plugins.federated import deploy

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("aggregation", ["ffa"])
def test_simulated_federation_writes_a_run_like_a_local_one(
    tmp_path, tiny_bert_dir, flower_env, aggregation
):
    from tunewright.plugins.federated.commands import add_commands  # noqa: F401  (the command exists)

    data = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(150))
    out = tmp_path / "run"
    # float16 on the wire here; the deployment test travels in float32
    config = federated_config(
        tmp_path,
        tiny_bert_dir,
        data,
        out,
        aggregation=aggregation,
        partition="dirichlet",
        dirichlet_alpha=0.5,
        transfer_dtype="float16",
    )
    exe = [sys.executable, "-m", "tunewright"]
    done = subprocess.run(
        [*exe, "federate", str(config)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in (
        "config.yaml",
        "plugins.json",
        "metrics.jsonl",
        "report.png",
        "eval.json",
        "labels.json",
        "adapter/adapter_config.json",
        "federated/rounds.jsonl",
        "federated/partition.json",
    ):
        assert (out / name).exists(), name
    rounds = [
        json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    summary = json.loads((out / "federated" / "summary.json").read_text())
    for record in rounds:
        assert {s["site"] for s in record["sites"]} == {"site-0", "site-1", "site-2"}
        for site in record["sites"]:
            assert site["status"] == "ok"
            # only the trainable state travels: under ffa B and the head, never A nor the base model,
            # in float16 (half its float32 bytes, plus Flower's headers)
            assert summary["transfer_dtype"] == "float16"
            half = summary["trainable_bytes"] / 2
            assert (
                half <= site["received_bytes"] < half + 20_000
                and site["sent_bytes"] == site["received_bytes"]
            )
            assert site["received_bytes"] * 10 < summary["full_model_bytes"]
        assert "loss" in record["central"] and "accuracy" in record["evaluate"]
    partition = json.loads((out / "federated" / "partition.json").read_text())
    assert (
        sum(s["examples"] for s in partition["sites"]) == 120
    )  # 150 less the 20% held out centrally
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in metrics if "round" in m] == [1, 2]
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["final"]["loss"] == pytest.approx(rounds[-1]["central"]["loss"], rel=1e-4)
    # the adapter is a plain PEFT adapter: tunewright eval takes the run unchanged
    held_out = out / "data" / "validation.jsonl"
    done = subprocess.run(
        [*exe, "eval", str(out), "--data", str(held_out), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(
        evaluation["final"]["accuracy"], abs=1e-6
    )
    # ... and tunewright export: an int8 bundle through the parity gate, run without torch
    bundle = tmp_path / "bundle"
    done = subprocess.run(
        [*exe, "export", str(out), "--out", str(bundle), "--quantize", "int8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["task_kind"] == "sequence_classification" and manifest["parity"]["passed"]
    done = subprocess.run(
        [*exe, "edge", "verify", str(bundle)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_a_terminated_simulation_exits_143_and_leaves_nothing_running(
    tmp_path, tiny_bert_dir, flower_env
):
    """SIGTERM mid-simulation: Ray's own handlers would abort the process (exit 134) or hold it
    in sys.exit while the server app's thread waits out its round; the simulation stops, Ray and
    its workers with it, and the command ends as any other terminated one: 143."""
    data = write_jsonl(tmp_path / "train.jsonl", sentiment_rows(150))
    out = tmp_path / "run"
    config = federated_config(tmp_path, tiny_bert_dir, data, out, rounds=50)
    log = tmp_path / "federate.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunewright", "federate", str(config)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    rounds = out / "federated" / "rounds.jsonl"
    try:
        wait_until(
            lambda: rounds.exists() and rounds.read_text().strip(),
            300,
            {"federate": proc},
            "the first round's record",
        )
        family = deploy.descendants(proc.pid)
        assert family, "Ray started nothing below the command"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        said = log.read_text(errors="replace")
        assert proc.returncode == 143, said[-3000:]
        assert said.rstrip().splitlines()[-1] == "terminated"
        wait_until(
            lambda: not [pid for pid in family if deploy.alive(pid)], 30, {}, "Ray's processes gone"
        )
        # the rounds already recorded stay; no final adapter was written for a run that did not end
        assert all(json.loads(line)["aggregated"] for line in rounds.read_text().splitlines())
        assert not (out / "adapter").exists()
    finally:
        deploy.stop(proc)
