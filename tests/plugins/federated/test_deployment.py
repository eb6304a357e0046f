"""Real deployments on loopback: ``tunewright federate server`` and ``tunewright federate site``
processes, each site with its own data. Two rounds run to completion through SecAgg+; in an
operator's federation (TLS, site keys) a site killed with SIGKILL in the middle of a round takes
its Flower processes with it and is left out, the others end by themselves with the run. Every
process is stopped by its id in a ``finally``; ``FLWR_HOME`` is a temporary folder."""

import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from federated_jobs import federated_config, sentiment_rows, wait_until, write_jsonl

from tunewright.plugins.federated import credentials, deploy

pytestmark = pytest.mark.slow
FEDERATE = [sys.executable, "-m", "tunewright", "federate"]


def start(procs, tmp_path, tiny_bert_dir, sites, **federated):
    """Start the server and its sites into ``procs`` (which the caller stops, whatever happens)."""
    port = deploy.free_port()
    central = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(40, seed=9))
    config = federated_config(
        tmp_path,
        tiny_bert_dir,
        central,
        tmp_path / "run",
        server={"host": "127.0.0.1", "port": port, "insecure": True},
        **federated,
    )
    raw = yaml.safe_load(config.read_text())
    raw["data"]["validation"] = 0.5  # the server's data is its central held-out set
    config.write_text(yaml.safe_dump(raw))
    procs["server"] = subprocess.Popen(
        [*FEDERATE, "server", str(config), "--timeout", "300"],
        stdout=(tmp_path / "server.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    for k, name in enumerate(sites):
        data = write_jsonl(tmp_path / f"{name}.jsonl", sentiment_rows(60, seed=k))
        procs[name] = subprocess.Popen(
            [
                *FEDERATE,
                "site",
                str(config),
                "--data",
                str(data),
                "--server",
                f"127.0.0.1:{port}",
                "--insecure",
                "--name",
                name,
                "--workdir",
                str(tmp_path / name),
            ],
            stdout=(tmp_path / f"{name}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )


def finish(procs, tmp_path, timeout=330):
    procs["server"].wait(timeout=timeout)
    assert procs["server"].returncode == 0, (tmp_path / "server.log").read_text()[-4000:]
    out = tmp_path / "run"
    return [
        json.loads(line) for line in (out / "federated" / "rounds.jsonl").read_text().splitlines()
    ]


def test_a_server_and_two_sites_run_two_rounds(tmp_path, tiny_bert_dir, flower_env):
    """Through SecAgg+ (Flower's legacy path, four messages per site and round, each in a fresh
    ``flwr-clientapp`` process that gets the protocol's state from its SuperNode); the plain path
    runs in the test below."""
    procs = {}
    try:
        start(
            procs,
            tmp_path,
            tiny_bert_dir,
            ["hospital-a", "hospital-b"],
            rounds=2,
            round_timeout=150,
            secure_aggregation={},
        )
        rounds = finish(procs, tmp_path)
    finally:
        for proc in procs.values():
            deploy.stop(proc)
    assert all(proc.poll() is not None for proc in procs.values())
    out = tmp_path / "run"
    for name in (
        "adapter/adapter_config.json",
        "eval.json",
        "metrics.jsonl",
        "report.png",
        "tokenizer",
    ):
        assert (out / name).exists(), name
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    trainable = json.loads((out / "federated" / "summary.json").read_text())["trainable_bytes"]
    for record in rounds:
        assert {s["site"]: s["status"] for s in record["sites"]} == {
            "hospital-a": "ok",
            "hospital-b": "ok",
        }
        assert {s["site"] for s in record["evaluate_sites"]} == {"hospital-a", "hospital-b"}
        # Flower starts a fresh process per message: each reply says how old its process was
        assert all(0 < s["process_age_seconds"] < 150 for s in record["sites"])
        # the sites' example counts travel in clear, their states only masked (keys, shares and
        # masked integers: more bytes than the state itself)
        assert all(s["num-examples"] > 0 and s["sent_bytes"] > trainable for s in record["sites"])
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["final"]["loss"] == pytest.approx(rounds[-1]["central"]["loss"], rel=1e-4)


def family_of(proc):
    """``proc`` and every process below it (the guard, Flower's SuperNode or SuperLink, their
    superexec and per-message processes)."""
    return [proc.pid, *deploy.descendants(proc.pid)]


def hold_training_plugin(folder):
    """A tunewright plugin, installed as a dist-info in ``folder`` (put it on a process's
    ``PYTHONPATH``), whose ``on_step_end`` never returns: the process it loads in stops training
    in the middle of its first round, for as long as it lives."""
    module = folder / "tw_hold_training.py"
    folder.mkdir()
    module.write_text(
        "import time\n\nfrom tunewright import hookimpl\n\n\n@hookimpl\n"
        "def on_step_end(run, step, logs):\n    while True:\n        time.sleep(1)\n"
    )
    info = folder / "tw_hold_training-0.0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: tw-hold-training\nVersion: 0.0.0\n"
    )
    (info / "entry_points.txt").write_text("[tunewright]\nhold = tw_hold_training\n")
    return folder


def test_a_site_killed_mid_round_is_left_out_and_the_others_end_by_themselves(
    tmp_path, tiny_bert_dir, flower_env
):
    """An operator's federation: TLS, site keys, three sites on their own data and a stranger whose
    key the server does not know. Site c is killed with SIGKILL as its first train message
    reaches it: what it started dies with it, the round in which it died is aggregated over a and
    b once Flower reports c gone (or at the deadline), the run ends, and a and b end by
    themselves (exit 0) as soon as the server closes. Under ``aggregation: product`` (FlexLoRA:
    B·A averaged and factored back into rank r), which no other test runs end to end.

    The deadline is what is proven, not a speed: ``round_timeout`` leaves a and b (three fresh
    ``flwr-clientapp`` processes at once on two busy cores) ample time to answer, and c's loss is
    reported by its SuperNode's going, by Flower's heartbeat check or by the deadline. Killed while
    uploading its reply, c leaves a half-sent message that Flower's pull retries for minutes: the
    replies of a and b are pulled apart from it (with them pulled together, the round missed its
    deadline and aggregated nothing)."""
    tls = {
        k: str(v)
        for k, v in credentials.make_tls(tmp_path / "tls", ["127.0.0.1", "localhost"]).items()
    }
    keys = {
        name: credentials.make_site_key(tmp_path / "keys", name)
        for name in ("a", "b", "c", "stranger")
    }
    port = deploy.free_port()
    central = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(30, seed=9))
    round_timeout, connect_timeout = 100, 60
    config = federated_config(
        tmp_path,
        tiny_bert_dir,
        central,
        tmp_path / "run",
        rounds=2,
        min_sites=2,
        round_timeout=round_timeout,
        connect_timeout=connect_timeout,
        wait_for_sites=240,
        aggregation="product",
        server={
            "host": "127.0.0.1",
            "port": port,
            **tls,
            "authorized_sites": [str(keys[n][1]) for n in ("a", "b", "c")],
        },
    )
    procs, logs = {}, {}
    # site c holds its first round at its first logged step until it is killed: a tiny model trains
    # its 4 steps in milliseconds, so a kill sent when its console shows the round could land
    # after it answered (then the round is not the one it died in, and nothing is proven)
    hold = hold_training_plugin(tmp_path / "hold")

    def site(name, key):
        data = write_jsonl(tmp_path / f"{name}.jsonl", sentiment_rows(60, seed=len(procs)))
        logs[name] = tmp_path / f"{name}.log"
        env = dict(os.environ)
        if name == "c":
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hold), env.get("PYTHONPATH")]))
        procs[name] = subprocess.Popen(
            [
                *FEDERATE,
                "site",
                str(config),
                "--data",
                str(data),
                "--server",
                f"127.0.0.1:{port}",
                "--root-certificates",
                tls["ca_certfile"],
                "--auth-key",
                str(key),
                "--name",
                name,
                "--workdir",
                str(tmp_path / name),
            ],
            stdout=logs[name].open("wb"),
            stderr=subprocess.STDOUT,
            env=env,
        )

    killed = []
    try:
        # the sites first: each prepares its run, then its SuperNode waits up to connect_timeout
        for name in ("a", "b", "c", "stranger"):
            site(name, keys[name][0])
        logs["server"] = tmp_path / "server.log"
        procs["server"] = subprocess.Popen(
            [*FEDERATE, "server", str(config), "--timeout", "600"],
            stdout=logs["server"].open("wb"),
            stderr=subprocess.STDOUT,
        )
        watched = {k: v for k, v in procs.items() if k != "stranger"}
        wait_until(
            lambda: "site c: round" in logs["c"].read_text(errors="replace"),
            400,
            watched,
            "site c training",
        )
        killed = family_of(procs["c"])
        assert len(killed) >= 4, killed  # the command, the guard, the SuperNode, its superexec
        procs["c"].kill()
        procs.pop("c").wait(timeout=10)
        # the SIGKILLed command's SuperNode and what that started end with it
        wait_until(
            lambda: not [pid for pid in killed if deploy.alive(pid)],
            30,
            {},
            "site c's processes ending",
        )
        wait_until(lambda: procs["stranger"].poll() is not None, 240, {}, "the stranger refused")
        assert procs.pop("stranger").returncode == 1
        procs["server"].wait(timeout=600)
        server_log = logs["server"].read_text(errors="replace")
        assert procs["server"].returncode == 0, server_log[-4000:]
        ended = time.monotonic()
        for name in ("a", "b"):  # they end by themselves once the server closed
            procs[name].wait(timeout=connect_timeout)
            assert procs[name].returncode == 0, logs[name].read_text(errors="replace")[-3000:]
        assert time.monotonic() - ended < connect_timeout
    finally:
        for proc in procs.values():
            deploy.stop(proc)
    everything = killed + [pid for proc in procs.values() for pid in family_of(proc)]
    assert not [pid for pid in everything if deploy.alive(pid)]

    rounds = [
        json.loads(line)
        for line in (tmp_path / "run" / "federated" / "rounds.jsonl").read_text().splitlines()
    ]
    assert [r["round"] for r in rounds] == [1, 2] and all(r["aggregated"] for r in rounds)
    lost_in = next(r for r in rounds if any(s["status"] != "ok" for s in r["sites"]))
    status = {s["site"]: s["status"] for s in lost_in["sites"]}
    assert status["a"] == status["b"] == "ok" and len(status) == 3
    # Flower answers for a site that stopped its heartbeats ("Node Unavailable"), else the deadline does
    lost = next(s for s in lost_in["sites"] if s["site"] not in ("a", "b"))
    assert lost["site"] == "c"
    assert (lost["status"], lost["problems"][0][:26]) in {
        ("failed", "Error: Node Unavailable — "),
        ("no reply", f"no reply within {round_timeout} s (f"),
    }
    # either way the round ended within its deadline (Flower's heartbeats may notice the loss first)
    assert lost_in["train_seconds_wall"] < round_timeout + 15
    if lost["status"] == "no reply":
        assert lost_in["train_seconds_wall"] > round_timeout - 1
    # the two sites' B·A (rank 4 each) averaged and factored back into rank 4: what the factors keep
    kept = lost_in["aggregation"]
    assert 0.5 < kept["kept_min"] <= kept["kept_mean"] <= 1.0 + 1e-6
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    # the central set is the server's whole data file, every round
    assert all(r["central_examples"] == 30 and "accuracy" in r["central"] for r in rounds)
    # the server's console: the baseline, the sites, every round with its sites and figures, refusals
    assert "baseline: evaluating" in server_log and "on 30 held-out examples" in server_log
    # the sites are named from their registered keys, before they answered anything
    assert all(f"site connected: {name} (node " in server_log for name in ("a", "b", "c"))
    for r in rounds:
        assert f"round {r['round']}/2: " in server_log and "sites aggregated (" in server_log
    assert (
        "a site was refused: its key is not among federated.server.authorized_sites" in server_log
    )
    assert "run written to" in server_log
    # each site's console: its rounds, and how it ended
    for name in ("a", "b"):
        text = logs[name].read_text(errors="replace")
        assert f"site {name}: round 2: " in text and "the federation's run finished" in text
    assert "refused this site: its key is not among" in logs["stranger"].read_text(errors="replace")
