"""Real deployments on loopback: ``tunewright federate server`` and ``tunewright federate site``
processes, each site with its own data. Two rounds run to completion; a site killed in the middle
of a round is left out at the round's deadline and the round goes on with the others. Every
process is stopped by its id in a ``finally``; ``FLWR_HOME`` is a temporary folder."""

import json
import subprocess
import sys

import pytest
import yaml

from federated_jobs import federated_config, sentiment_rows, wait_until, write_jsonl
from tunewright.plugins.federated import deploy

pytestmark = pytest.mark.slow
FEDERATE = [sys.executable, "-m", "tunewright", "federate"]


def start(procs, tmp_path, tiny_bert_dir, sites, **federated):
    """Start the server and its sites into ``procs`` (which the caller stops, whatever happens)."""
    port = deploy.free_port()
    central = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(40, seed=9))
    config = federated_config(tmp_path, tiny_bert_dir, central, tmp_path / "run",
                              server={"host": "127.0.0.1", "port": port, "insecure": True}, **federated)
    raw = yaml.safe_load(config.read_text())
    raw["data"]["validation"] = 0.5   # the server's data is its central held-out set
    config.write_text(yaml.safe_dump(raw))
    procs["server"] = subprocess.Popen([*FEDERATE, "server", str(config), "--timeout", "300"],
                                       stdout=(tmp_path / "server.log").open("wb"), stderr=subprocess.STDOUT)
    for k, name in enumerate(sites):
        data = write_jsonl(tmp_path / f"{name}.jsonl", sentiment_rows(60, seed=k))
        procs[name] = subprocess.Popen(
            [*FEDERATE, "site", str(config), "--data", str(data), "--server", f"127.0.0.1:{port}", "--insecure",
             "--name", name, "--workdir", str(tmp_path / name)],
            stdout=(tmp_path / f"{name}.log").open("wb"), stderr=subprocess.STDOUT)


def finish(procs, tmp_path, timeout=330):
    procs["server"].wait(timeout=timeout)
    assert procs["server"].returncode == 0, (tmp_path / "server.log").read_text()[-4000:]
    out = tmp_path / "run"
    return [json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()]


def test_a_server_and_two_sites_run_two_rounds(tmp_path, tiny_bert_dir, flower_env):
    """Through SecAgg+ (Flower's legacy path, four messages per site and round, each in a fresh
    ``flwr-clientapp`` process that gets the protocol's state from its SuperNode); the plain path
    runs in the test below."""
    procs = {}
    try:
        start(procs, tmp_path, tiny_bert_dir, ["hospital-a", "hospital-b"], rounds=2, round_timeout=150,
              secure_aggregation={})
        rounds = finish(procs, tmp_path)
    finally:
        for proc in procs.values():
            deploy.stop(proc)
    assert all(proc.poll() is not None for proc in procs.values())
    out = tmp_path / "run"
    for name in ("adapter/adapter_config.json", "eval.json", "metrics.jsonl", "report.png", "tokenizer"):
        assert (out / name).exists(), name
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    trainable = json.loads((out / "federated" / "summary.json").read_text())["trainable_bytes"]
    for record in rounds:
        assert {s["site"]: s["status"] for s in record["sites"]} == {"hospital-a": "ok", "hospital-b": "ok"}
        assert {s["site"] for s in record["evaluate_sites"]} == {"hospital-a", "hospital-b"}
        # Flower starts a fresh process per message: each reply says how old its process was
        assert all(0 < s["process_age_seconds"] < 150 for s in record["sites"])
        # the sites' example counts travel in clear, their states only masked (keys, shares and
        # masked integers: more bytes than the state itself)
        assert all(s["num-examples"] > 0 and s["sent_bytes"] > trainable for s in record["sites"])
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["final"]["loss"] == pytest.approx(rounds[-1]["central"]["loss"], rel=1e-4)


def test_a_site_killed_mid_round_is_left_out_at_the_deadline(tmp_path, tiny_bert_dir, flower_env):
    """Under ``aggregation: product`` (FlexLoRA: B·A averaged, factored back into rank r), which
    no other test runs end to end."""
    procs = {}
    try:
        start(procs, tmp_path, tiny_bert_dir, ["a", "b", "c"], rounds=1, min_sites=3, round_timeout=30,
              site_evaluation=False, aggregation="product")
        # kill site c as its first train message reaches it, with the round open
        wait_until(lambda: "site c: round 1: fit" in (tmp_path / "c.log").read_text(errors="replace"), 240,
                   procs, "site c training")
        deploy.stop(procs.pop("c"))
        rounds = finish(procs, tmp_path)
    finally:
        for proc in procs.values():
            deploy.stop(proc)
    (record,) = rounds
    status = {s["site"]: s["status"] for s in record["sites"]}
    assert record["aggregated"] and status["a"] == status["b"] == "ok" and len(status) == 3
    # Flower answers for a site that stopped its heartbeats ("Node Unavailable"), else the deadline does
    lost = next(s for s in record["sites"] if s["site"] not in ("a", "b"))
    assert (lost["status"], lost["problems"][0][:26]) in {("failed", "Error: Node Unavailable — "),
                                                          ("no reply", "no reply within 30 s (fede")}
    # either way the round ended within its deadline (Flower's heartbeats may notice the loss first)
    assert record["train_seconds_wall"] < 45
    if lost["status"] == "no reply":
        assert record["train_seconds_wall"] > 29
    # the two sites' B·A (rank 4 each) averaged and factored back into rank 4: what the factors keep
    kept = record["aggregation"]
    assert 0.5 < kept["kept_min"] <= kept["kept_mean"] <= 1.0 + 1e-6
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
