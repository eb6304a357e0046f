"""A real deployment on loopback: ``tunewright federate server`` and three ``tunewright federate
site`` processes, each with its own data. One site is killed in the middle of round 1: the round
ends at its deadline and goes on with the two others; both rounds complete and the run directory
is a local run's. Every process is stopped by its id in the ``finally``."""

import json
import subprocess
import sys
import time

import pytest
import yaml

from conftest import federated_config, sentiment_rows, write_jsonl
from tunewright.plugins.federated import deploy

pytestmark = pytest.mark.slow


def wait_for(path, text, timeout, procs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        for proc in procs:
            assert proc.poll() is None or proc.returncode == 0, path.read_text(errors="replace")[-3000:]
        time.sleep(0.5)
    raise AssertionError(f"{text!r} not in {path} after {timeout} s: {path.read_text(errors='replace')[-3000:]}")


def test_server_and_sites_on_loopback_run_two_rounds_despite_a_crashed_site(tmp_path, tiny_bert_dir, flower_env):
    port = deploy.free_port()
    central = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(40, seed=9))
    config = federated_config(tmp_path, tiny_bert_dir, central, tmp_path / "run", round_timeout=25,
                              server={"host": "127.0.0.1", "port": port, "insecure": True})
    raw = yaml.safe_load(config.read_text())
    raw["data"]["validation"] = 0.5
    config.write_text(yaml.safe_dump(raw))
    exe = [sys.executable, "-m", "tunewright", "federate"]
    logs = {name: tmp_path / f"{name}.log" for name in ("server", "a", "b", "c")}
    procs = {}
    try:
        procs["server"] = subprocess.Popen([*exe, "server", str(config), "--timeout", "400"],
                                           stdout=logs["server"].open("wb"), stderr=subprocess.STDOUT)
        wait_for(logs["server"], "submitted; waiting for sites", 120, [procs["server"]])
        for k, name in enumerate("abc"):
            data = write_jsonl(tmp_path / f"{name}.jsonl", sentiment_rows(60, seed=k))
            procs[name] = subprocess.Popen(
                [*exe, "site", str(config), "--data", str(data), "--server", f"127.0.0.1:{port}", "--insecure",
                 "--name", f"hospital-{name}", "--workdir", str(tmp_path / f"site-{name}")],
                stdout=logs[name].open("wb"), stderr=subprocess.STDOUT)
        wait_for(logs["server"], "round 1/2: training on 3 site(s)", 180, list(procs.values()))
        time.sleep(1.0)
        deploy.stop(procs.pop("c"))           # a site dies while the round is running
        procs["server"].wait(timeout=420)
        assert procs["server"].returncode == 0, logs["server"].read_text()[-4000:]
    finally:
        for proc in procs.values():
            deploy.stop(proc)
    out = tmp_path / "run"
    for name in ("adapter/adapter_config.json", "eval.json", "metrics.jsonl", "report.png", "federated/rounds.jsonl"):
        assert (out / name).exists(), name
    rounds = [json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    first = {s["site"]: s for s in rounds[0]["sites"]}
    assert first["hospital-a"]["status"] == first["hospital-b"]["status"] == "ok"
    lost = [s for s in rounds[0]["sites"] if s["status"] != "ok"]
    assert len(lost) == 1 and "no reply within 25 s" in lost[0]["problems"][0]
    # Flower starts a fresh process per message: every reply says how old its process was
    assert all(0 < s["process_age_seconds"] < 120 for r in rounds for s in r["sites"] if s["status"] == "ok")
    assert json.loads((out / "eval.json").read_text())["final"]["accuracy"] >= 0
