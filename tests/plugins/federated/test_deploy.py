"""Flower's real processes on loopback: TLS with site authentication refuses an unregistered site
(and the server's console can say so), a site that speaks plain HTTP to a TLS server is told so at
once, a site whose server is unreachable (or goes away) fails with a clear error within its
deadline, a server or site that is sent SIGTERM stops the Flower processes it started, and a server
killed with SIGKILL leaves none running. Every process is stopped by its id in a ``finally``;
``FLWR_HOME`` is a temporary folder."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from federated_jobs import federated_config, sentiment_rows, wait_until, write_jsonl

from tunewright import JobFailed, UsageError
from tunewright.plugins.federated import credentials, deploy
from tunewright.plugins.federated.settings import ServerSettings

pytestmark = pytest.mark.slow
FEDERATE = [sys.executable, "-m", "tunewright", "federate"]


def site_argv(port, server_port, *, key=None, ca=None, timeout=10):
    argv = [
        deploy.executable("flower-supernode"),
        "--superlink",
        f"127.0.0.1:{server_port}",
        "--port",
        str(port),
        "--max-wait-time",
        str(timeout),
    ]
    argv += ["--root-certificates", str(ca)] if ca else ["--insecure"]
    return argv + (["--auth-supernode-private-key", str(key)] if key else [])


def test_tls_server_with_site_authentication_refuses_an_unregistered_site(tmp_path):
    tls = credentials.make_tls(tmp_path / "tls", ["127.0.0.1", "localhost"])
    registered = credentials.make_site_key(tmp_path / "keys", "hospital-a")
    stranger = credentials.make_site_key(tmp_path / "keys", "stranger")
    port = deploy.free_port()
    server = ServerSettings(
        port=port, authorized_sites=[str(registered[1])], **{k: str(v) for k, v in tls.items()}
    )
    home = tmp_path / "home"
    home.mkdir()
    env = deploy.flower_env(home)
    (home / "config.toml").write_text(
        deploy.connection_toml("tunewright", f"127.0.0.1:{port}", server)
    )
    log = tmp_path / "superlink.log"
    superlink = subprocess.Popen(
        deploy.superlink_args(server),
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    good = None
    try:
        deploy.wait_for_port("127.0.0.1", port, 60, superlink, "flower-superlink", log)
        node = deploy.flwr(["supernode", "register", str(registered[1]), "tunewright"], env)[
            "node-id"
        ]
        started = time.monotonic()
        with pytest.raises(JobFailed, match="refused this site: its key is not among"):
            deploy.run_site(
                site_argv(deploy.free_port(), port, key=stranger[0], ca=tls["ca_certfile"]),
                tmp_path / "stranger",
                f"127.0.0.1:{port}",
                10,
                echo=lambda m: None,
            )
        assert time.monotonic() - started < 60
        # the registered site is let in with the same CA, over TLS
        good = subprocess.Popen(
            site_argv(deploy.free_port(), port, key=registered[0], ca=tls["ca_certfile"]),
            env=env,
            stdout=(tmp_path / "good.log").open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        status = None
        while time.monotonic() < deadline and status != "online":
            nodes = deploy.flwr(["supernode", "list", "tunewright"], env)["nodes"]
            status = next(n["status"] for n in nodes if str(n["node-id"]) == str(node))
            time.sleep(1)
        assert status == "online"
        # the SuperLink names the refused key only in its log: the server's console shows it
        shown = [deploy.refusals(line) for line in log.read_text(errors="replace").splitlines()]
        assert any(
            line and "its key is not among federated.server.authorized_sites" in line
            for line in shown
        )
        # a site that does not speak TLS is told so at once, before its SuperNode starts
        started = time.monotonic()
        with pytest.raises(
            UsageError,
            match=rf"--insecure: the server at 127.0.0.1:{port} speaks TLS and this "
            "site plain HTTP; drop --insecure and give --root-certificates",
        ):
            deploy.run_site(
                site_argv(deploy.free_port(), port, timeout=60),
                tmp_path / "plain",
                f"127.0.0.1:{port}",
                60,
                echo=lambda m: None,
            )
        assert time.monotonic() - started < 10
        assert not (tmp_path / "plain" / "supernode.log").exists()
    finally:
        if good is not None:
            deploy.stop(good)
        deploy.stop(superlink)
    assert superlink.poll() is not None


def test_unreachable_server_is_a_clear_error_within_the_deadline(tmp_path):
    port = deploy.free_port()  # nothing listens there
    started = time.monotonic()
    with pytest.raises(
        JobFailed, match=rf"--server 127.0.0.1:{port}: could not reach the server within 3 s"
    ):
        deploy.run_site(
            site_argv(deploy.free_port(), port, timeout=3),
            tmp_path / "site",
            f"127.0.0.1:{port}",
            3,
            echo=lambda m: None,
        )
    assert time.monotonic() - started < 40


def _terminate_when(proc, log, line, timeout=120):
    """Wait for ``line`` in ``log``; then SIGTERM ``proc`` and return what it had started."""
    wait_until(
        lambda: line in log.read_text(errors="replace"),
        timeout,
        {"the command": proc},
        f"{line!r} in {log}",
    )
    assert proc.poll() is None, f"exited with {proc.returncode}: {log.read_text()[-3000:]}"
    family = deploy.descendants(proc.pid)
    assert family, "nothing started below the command"
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    return family


def test_a_terminated_server_stops_its_superlink_and_what_that_started(
    tmp_path, tiny_bert_dir, flower_env
):
    """SIGTERM (a scheduler's preemption, ``kill``) ends ``federate server`` with exit 143 and
    takes the SuperLink, which runs in a session of its own, and its server app down with it."""
    port = deploy.free_port()
    data = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(20, seed=1))
    config = federated_config(
        tmp_path,
        tiny_bert_dir,
        data,
        tmp_path / "run",
        server={"host": "127.0.0.1", "port": port, "insecure": True},
    )
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [*FEDERATE, "server", str(config), "--timeout", "300"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        family = _terminate_when(proc, log, "submitted; waiting for sites")
        assert proc.returncode == 143, log.read_text()[-3000:]
        assert "terminated" in log.read_text()
        assert not [pid for pid in family if deploy.alive(pid)]
        with socket.socket() as sock:  # a new server can listen there again (as uvicorn does, past
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # connections in TIME_WAIT)
            sock.bind(("127.0.0.1", port))
            sock.listen()
    finally:
        deploy.stop(proc)


def test_a_killed_server_leaves_nothing_running(tmp_path, tiny_bert_dir, flower_env):
    """SIGKILL (the OOM killer, ``kill -9``) gives ``federate server`` no chance to stop anything:
    its SuperLink, which runs in a session of its own, and what that started end with it anyway."""
    port = deploy.free_port()
    data = write_jsonl(tmp_path / "central.jsonl", sentiment_rows(20, seed=1))
    config = federated_config(
        tmp_path,
        tiny_bert_dir,
        data,
        tmp_path / "run",
        server={"host": "127.0.0.1", "port": port, "insecure": True},
    )
    log = tmp_path / "server.log"
    proc = subprocess.Popen(
        [*FEDERATE, "server", str(config), "--timeout", "300"],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    family = []
    try:
        wait_until(
            lambda: "submitted; waiting for sites" in log.read_text(errors="replace"),
            120,
            {"the command": proc},
            "the run submitted",
        )
        family = deploy.descendants(proc.pid)
        assert len(family) >= 3, family  # the guard, the SuperLink, its superexec (and server app)
        proc.kill()
        proc.wait(timeout=10)
        wait_until(
            lambda: not [pid for pid in family if deploy.alive(pid)],
            30,
            {},
            "the server's processes ending",
        )
    finally:
        deploy.stop(proc)
        for pid in family:
            if deploy.alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_terminated_site_stops_its_supernode(tmp_path, tiny_bert_dir, flower_env):
    port = deploy.free_port()  # no server: the site keeps trying to connect until it is stopped
    data = write_jsonl(tmp_path / "site.jsonl", sentiment_rows(20, seed=2))
    config = federated_config(tmp_path, tiny_bert_dir, data, tmp_path / "run", connect_timeout=120)
    log = tmp_path / "site.log"
    proc = subprocess.Popen(
        [
            *FEDERATE,
            "site",
            str(config),
            "--data",
            str(data),
            "--server",
            f"127.0.0.1:{port}",
            "--insecure",
            "--workdir",
            str(tmp_path / "site"),
        ],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        family = _terminate_when(proc, log, "site started (pid")
        assert proc.returncode == 143, log.read_text()[-3000:]
        assert not [pid for pid in family if deploy.alive(pid)]
    finally:
        deploy.stop(proc)


def test_a_site_whose_server_goes_away_stops_after_connect_timeout(tmp_path):
    """Flower's SuperNode gives up reconnecting to a SuperLink that went away but does not exit:
    the site stops it once the server has been unreachable for ``connect_timeout`` seconds."""
    import threading

    port = deploy.free_port()
    server = ServerSettings(port=port, insecure=True)
    log = tmp_path / "superlink.log"
    superlink = deploy.start_guarded(
        deploy.superlink_args(server), deploy.flower_env(tmp_path), log
    )
    outcome = {}

    def site():  # in a thread that lives as long as the site (its guard's death signal follows it)
        try:
            outcome["code"] = deploy.run_site(
                site_argv(deploy.free_port(), port, timeout=8),
                tmp_path / "site",
                f"127.0.0.1:{port}",
                8,
                echo=lambda m: None,
            )
        except Exception as exc:  # asserted on below
            outcome["error"] = exc

    thread = threading.Thread(target=site)
    try:
        deploy.wait_for_port("127.0.0.1", port, 60, superlink, "flower-superlink", log)
        thread.start()
        node_log = tmp_path / "site" / "supernode.log"
        wait_until(
            lambda: node_log.exists() and "SuperNode ID:" in node_log.read_text(errors="replace"),
            120,
            {},
            "the site connecting",
        )
        stopping = time.monotonic()  # the site last reached it at most a poll (1 s) before
        deploy.stop(superlink)
        thread.join(timeout=60)
        assert not thread.is_alive()
        assert 7 <= time.monotonic() - stopping < 40
    finally:
        deploy.stop(superlink)
        thread.join(timeout=60)
    assert isinstance(outcome.get("error"), JobFailed), outcome
    assert str(outcome["error"]).startswith(
        f"--server 127.0.0.1:{port}: the server has been unreachable for 8 s "
        "(federated.connect_timeout)"
    )
