"""Deployment: Flower's SuperLink (the server) and SuperNodes (the sites) as child processes.

``tunewright federate server CONFIG`` starts ``flower-superlink`` on the configured host and port
(HTTP(S) on one port since Flower 1.40), registers the sites' public keys when site
authentication is on, submits a generated Flower app whose ServerApp runs the job
(:data:`apps.server_app`), waits for it, and stops the SuperLink. ``tunewright federate site``
prepares the site's run, serves it on a private Unix socket (:mod:`worker`) and starts
``flower-supernode`` with that socket in its ``--node-config``; Flower starts a fresh
``flwr-clientapp`` process for every message, which forwards the message to the socket.

The Flower executables are taken from the scripts folder of the Python running tunewright (so the
processes import the same tunewright), and every process started here is stopped by its id, its
children with it; each runs under :mod:`guard`, so that it ends with this process even when this
one is killed with SIGKILL. A site watches its server: it ends once it has answered the last round
and the server has closed, or when the server has been gone for ``connect_timeout`` seconds.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tunewright import ConfigError, JobFailed, UsageError

from .guard import below, guarded

POLL_SECONDS = 0.5


def executable(name: str) -> str:
    """A Flower executable beside this interpreter (the same environment, the same tunewright)."""
    for folder in (Path(sysconfig.get_path("scripts")), Path(sys.executable).parent):
        if (folder / name).exists():
            return str(folder / name)
    raise UsageError(
        f"{name} not found beside {sys.executable}; install the federated extra: "
        "pip install 'tunewright[federated]'"
    )


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: its own ``FLWR_HOME``, this environment's
    executables first on ``PATH`` (Flower starts its helpers by name), no update check."""
    env = dict(os.environ)
    env["FLWR_HOME"] = str(flwr_home)
    env["PATH"] = os.pathsep.join([str(Path(executable("flwr")).parent), env.get("PATH", "")])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    return env


def start_guarded(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start a Flower process under :mod:`guard`: it and whatever it starts end with this process,
    even when this one is killed with SIGKILL. Call it from the main thread or one that outlives
    the process (the death signal follows the thread that started it)."""
    with log.open("ab") as handle:
        return subprocess.Popen(
            guarded(args),
            env=env,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere): the guard's own walk."""
    return below(pid)


def stop(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process we started and everything it started, each by its id: TERM, then KILL."""
    if proc.poll() is not None and not descendants(proc.pid):
        return
    family = [proc.pid, *descendants(proc.pid)]
    for pid in family:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(pid) for pid in family):
        proc.poll()
        time.sleep(0.1)
    for pid in family + descendants(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie does not; Linux /proc)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return False


def wait_for_port(
    host: str, port: int, timeout: float, proc: subprocess.Popen, what: str, log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise JobFailed(
                f"{what} exited with code {proc.returncode} before it listened on "
                f"{host}:{port}: {tail(log)}"
            )
        try:
            with socket.create_connection(
                (host if host != "0.0.0.0" else "127.0.0.1", port), timeout=1
            ):
                return
        except OSError:
            time.sleep(POLL_SECONDS)
    raise JobFailed(f"{what} did not listen on {host}:{port} within {timeout:.0f} s: {tail(log)}")


def tail(log: Path, lines: int = 8) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(line.strip() for line in text[-lines:] if line.strip())


def flwr(args: list[str], env: dict[str, str], timeout: float = 120) -> dict:
    """Run the ``flwr`` command line with ``--format json``; its JSON answer."""
    try:
        done = subprocess.run(
            [executable("flwr"), *args, "--format", "json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        raise JobFailed(f"flwr {' '.join(args[:2])} did not answer within {timeout:.0f} s") from exc
    start = done.stdout.find("{")
    try:
        answer = json.loads(done.stdout[start:]) if start >= 0 else {}
    except json.JSONDecodeError:
        answer = {}
    if done.returncode != 0 or not answer.get("success", False):
        reason = (
            answer.get("error-message") or done.stderr.strip()[-500:] or done.stdout.strip()[-500:]
        )
        raise JobFailed(f"flwr {' '.join(args[:2])} failed: {reason}")
    return answer


# -- the server -----------------------------------------------------------------------------------

APP_PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "tunewright-federation"
version = "1.0.0"
description = "A tunewright federated job"
# empty: the sites and the server use the tunewright installed beside Flower
dependencies = []

[tool.flwr.app]
publisher = "tunewright"

[tool.flwr.app.components]
serverapp = "tunewright.plugins.federated.apps:server_app"
clientapp = "tunewright.plugins.federated.apps:client_app"

[tool.flwr.app.config]
config = {config}
result = {result}
progress = {progress}
sites = {sites}
overwrite = {overwrite}
"""


def write_app(
    folder: Path, config_path: Path, result: Path, overwrite: bool, progress: Path, sites: Path
) -> Path:
    """A Flower app (a ``pyproject.toml``) that runs this job: what ``flwr run`` submits."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(
        APP_PYPROJECT.format(
            config=json.dumps(str(config_path.resolve())),
            result=json.dumps(str(result.resolve())),
            progress=json.dumps(str(progress.resolve())),
            sites=json.dumps(str(sites.resolve())),
            overwrite="true" if overwrite else "false",
        )
    )
    (folder / "federation.py").write_text(
        '"""The app\'s code is tunewright\'s: see pyproject.toml."""\n'
    )
    return folder


def connection_toml(name: str, address: str, server: Any) -> str:
    lines = [
        "[superlink]",
        f'default = "{name}"',
        "",
        f"[superlink.{name}]",
        f'address = "{address}"',
    ]
    if server.insecure:
        lines.append("insecure = true")
    else:
        lines.append(f"root-certificates = {json.dumps(str(Path(server.ca_certfile).resolve()))}")
    return "\n".join(lines) + "\n"


def superlink_args(server: Any) -> list[str]:
    args = [
        executable("flower-superlink"),
        "--disable-runtime-dependency-installation",
        "--host",
        server.host,
        "--port",
        str(server.port),
    ]
    if server.insecure:
        args.append("--insecure")
    else:
        args += [
            "--ssl-ca-certfile",
            server.ca_certfile,
            "--ssl-certfile",
            server.certfile,
            "--ssl-keyfile",
            server.keyfile,
        ]
    if server.authorized_sites:
        args.append("--enable-supernode-auth")
    return args


def serve_federation(
    config_path: Path,
    server: Any,
    *,
    overwrite: bool,
    echo: Callable[[str], None],
    workdir: Path,
    timeout: float | None = None,
) -> dict:
    """Start the SuperLink, admit the sites, run the job, stop everything; the job's outcome."""
    workdir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=workdir))
    env = flower_env(home)
    address = f"{'127.0.0.1' if server.host in ('0.0.0.0', '::') else server.host}:{server.port}"
    (home / "config.toml").write_text(connection_toml("tunewright", address, server))
    log = workdir / "superlink.log"
    result = workdir / "result.json"
    result.unlink(missing_ok=True)
    proc = start_guarded(superlink_args(server), env, log)
    progress = workdir / "progress.log"
    progress.write_text("")
    shown = {"progress": 0, "log": log.stat().st_size if log.exists() else 0}

    def relay() -> None:
        """Echo what the job said (the ServerApp runs in a process of Flower's) and the sites
        the SuperLink refused (Flower logs an unregistered key only as ApiError 2004)."""
        shown["progress"] = _echo_new(progress, shown["progress"], echo)
        shown["log"] = _echo_new(log, shown["log"], echo, refusals)

    try:
        wait_for_port(server.host, server.port, 60, proc, "flower-superlink", log)
        echo(
            f"server listening on {address} ({'plain HTTP' if server.insecure else 'TLS'}"
            f"{', site authentication on' if server.authorized_sites else ''}); log: {log}"
        )
        names = {}
        for key in server.authorized_sites or []:
            if not Path(key).is_file():
                raise UsageError(f"federated.server.authorized_sites: {key}: file not found")
            node = flwr(["supernode", "register", str(Path(key).resolve()), "tunewright"], env).get(
                "node-id"
            )
            names[str(node)] = Path(key).name.removesuffix(".pub")
            echo(f"site key registered: {key} (site {names[str(node)]}, node {node})")
        sites = workdir / "sites.json"
        sites.write_text(json.dumps(names))  # the rounds name each site from its first message on
        app = write_app(workdir / "app", config_path, result, overwrite, progress, sites)
        submitted = flwr(["run", str(app), "tunewright"], env)
        run_id = submitted["run-id"]
        echo(f"federated run {run_id} submitted; waiting for sites")
        deadline = None if timeout is None else time.monotonic() + timeout
        asked = time.monotonic()
        while True:
            relay()
            if result.exists():
                return json.loads(result.read_text())
            if proc.poll() is not None:
                raise JobFailed(f"flower-superlink exited with code {proc.returncode}: {tail(log)}")
            # `flwr ls` is a Python process of its own: asked seldom, it does not slow the sites
            if time.monotonic() - asked > RUN_STATUS_SECONDS:
                asked = time.monotonic()
                status = flwr(["ls", "tunewright", "--run-id", str(run_id)], env)["runs"][0][
                    "status"
                ]
                if status.startswith("finished") and not result.exists():
                    time.sleep(1)  # the result file is written before the run is marked finished
                    if not result.exists():
                        raise JobFailed(
                            f"federated run {run_id} ended ({status}) without a result: {tail(log)}"
                        )
            if deadline is not None and time.monotonic() > deadline:
                flwr(["stop", str(run_id), "tunewright"], env)
                raise JobFailed(f"federated run {run_id} did not finish within {timeout:.0f} s")
            time.sleep(POLL_SECONDS)
    finally:
        relay()
        stop(proc)


RUN_STATUS_SECONDS = 15.0


def refusals(line: str) -> str | None:
    """A SuperLink log line that refused a site, as the operator should read it."""
    if "2004" in line and ("ApiError" in line or "activate" in line.lower()):
        found = re.search(r"exception: (.+)$", line.strip())
        return "a site was refused: its key is not among federated.server.authorized_sites" + (
            f" (Flower: {found.group(1)[:200]})" if found else ""
        )
    return None


def _echo_new(
    path: Path,
    offset: int,
    echo: Callable[[str], None],
    pick: Callable[[str], str | None] | None = None,
) -> int:
    """Echo the complete lines added to ``path`` since ``offset`` (all, or what ``pick`` makes of
    them); the new offset."""
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    end = data.rfind(b"\n") + 1
    for line in data[:end].decode(errors="replace").splitlines():
        shown = pick(line) if pick else line
        if shown:
            echo(shown)
    return offset + end


# -- a site ---------------------------------------------------------------------------------------

SUPERNODE_NO_SERVER = 305  # Flower's exit code when the SuperLink cannot be reached


def site_args(
    server_address: str,
    *,
    name: str,
    socket: Path,
    port: int,
    connect_timeout: float,
    root_certificates: str | None,
    auth_key: str | None,
    insecure: bool,
) -> list[str]:
    """``flower-supernode``'s command line for a site served on ``socket`` (see :mod:`worker`)."""
    node_config = " ".join(
        f"{k}={json.dumps(str(v))}" for k, v in {"name": name, "socket": socket}.items()
    )
    args = [
        executable("flower-supernode"),
        "--superlink",
        server_address,
        "--port",
        str(port),
        "--node-config",
        node_config,
        "--max-wait-time",
        str(connect_timeout),
    ]
    if insecure:
        args.append("--insecure")
    elif root_certificates:
        args += ["--root-certificates", root_certificates]
    if auth_key:
        args += ["--auth-supernode-private-key", auth_key]
    return args


def speaks_tls(host: str, port: int, timeout: float = 5.0) -> bool | None:
    """Whether the server at ``host:port`` answers a TLS handshake (``None``: nothing answers
    there yet). The certificate is not checked here: only which protocol the port speaks."""
    import ssl

    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        raw = socket.create_connection((host, port), timeout=timeout)
    except OSError:
        return None
    with raw:
        try:
            with context.wrap_socket(raw, server_hostname=host):
                return True
        except TimeoutError:
            return None  # a server too busy to answer: the SuperNode's own errors will tell
        except (ssl.SSLError, OSError):
            return False


def check_transport(server_address: str, insecure: bool) -> None:
    """Fail at once, not after ``connect_timeout``, when the site and the server disagree on TLS."""
    host, _, port = server_address.rpartition(":")
    found = speaks_tls(host.strip("[]"), int(port))
    if found is True and insecure:
        raise UsageError(
            f"--insecure: the server at {server_address} speaks TLS and this site plain HTTP; "
            "drop --insecure and give --root-certificates (the CA that signed the server's "
            "certificate)"
        )
    if found is False and not insecure:
        raise UsageError(
            f"--root-certificates: the server at {server_address} speaks plain HTTP "
            "(federated.server.insecure: true) and this site TLS; use --insecure, or start the "
            "server with TLS files"
        )


def reachable(server_address: str, timeout: float = 2.0) -> bool:
    host, _, port = server_address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class SiteProgress:
    """What the site's process knows of its federation, told by :class:`worker.SiteServer`:
    whether it answered the last round (the message's ``server-round`` equals its ``rounds``) and
    whether it refused the server (its config differs: the server leaves it out from then on)."""

    def __init__(self) -> None:
        self.finished = False
        self.refused: str | None = None
        self.refused_at = 0.0

    def answered(self, name: str, op: str, config: dict, reply: dict) -> str:
        """Note a reply of site ``name`` (``worker.SiteServer``'s ``on_reply``); the line its
        console shows."""
        rounds = config.get("rounds")
        if rounds is not None and int(config.get("server-round", 0)) >= int(rounds):
            self.finished = True
        where = f"site {name}: round {config.get('server-round', '?')}: {op}"
        if reply.get("ok"):
            return f"{where} answered in {float(reply.get('site_seconds', 0.0)):.1f} s"
        if reply.get("kind") in ("ConfigError", "DataError", "UsageError"):
            self.refused = str(reply.get("error"))
            self.refused_at = time.monotonic()
            return f"{where}: refused, this site cannot train for this server (it ends): {self.refused}"
        return f"{where}: failed: {reply.get('kind')}: {reply.get('error')}"


#: seconds a refused site stays, for its refusal to reach the server's round record
REFUSAL_GRACE = 10.0


def _command(pid: int) -> str:
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""


def run_site(
    args: list[str],
    workdir: Path,
    server_address: str,
    connect_timeout: float,
    echo: Callable[[str], None],
    progress: SiteProgress | None = None,
) -> int:
    """Run a SuperNode until its federation is over: exit 0 once the site answered the last round
    and the server closed; a :class:`tunewright.JobFailed` when the server has been gone for
    ``connect_timeout`` seconds (Flower's SuperNode gives up reconnecting but does not exit), a
    :class:`tunewright.ConfigError` when the site refused the server's config. The SuperNode and
    what it started stop with this process, also when it is interrupted (the interruption goes
    on up) or killed (:mod:`guard`)."""
    check_transport(server_address, "--insecure" in args)
    progress = progress or SiteProgress()
    workdir.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="flwr-home-", dir=workdir))
    log = workdir / "supernode.log"
    proc = start_guarded(args, flower_env(home), log)
    echo(f"site started (pid {proc.pid}), connecting to {server_address}; log: {log}")
    reached_at = None  # when the server was last reachable
    try:
        while proc.poll() is None:
            if reachable(server_address):
                reached_at = time.monotonic()
            elif progress.finished:
                echo(
                    f"the federation's run finished (this site answered its last round) and the server "
                    f"at {server_address} closed; site done"
                )
                return 0
            elif (
                progress.refused is not None
                and time.monotonic() - progress.refused_at > REFUSAL_GRACE
                and not any("flwr-clientapp" in _command(pid) for pid in descendants(proc.pid))
            ):
                # its refusal has gone out (the per-message process handed it to the SuperNode)
                raise ConfigError(
                    f"--server {server_address}: this site refused the server's job and was left "
                    f"out: {progress.refused}"
                )
            elif reached_at is not None and time.monotonic() - reached_at > connect_timeout:
                raise JobFailed(
                    f"--server {server_address}: the server has been unreachable for "
                    f"{connect_timeout:g} s (federated.connect_timeout) before the federation's "
                    "last round; this site stops"
                )
            time.sleep(1.0)
        code = proc.returncode
    finally:  # also on Ctrl-C or SIGTERM (the command line raises it here), which go on up
        stop(proc)
    text = tail(log, 40)
    if "Failed to activate SuperNode" in text:  # Flower's [code: 2004]
        raise JobFailed(
            f"--server {server_address}: the server refused this site: its key is not among "
            "the server's federated.server.authorized_sites (or --auth-key is missing)"
        )
    if (
        code in (SUPERNODE_NO_SERVER, SUPERNODE_NO_SERVER % 256)
        or "Failed to initialize the connection" in text
    ):
        reason = (
            text.split("Failed to initialize the connection to the SuperLink. |", 1)[-1]
            .split("|")[0]
            .strip()
        )
        raise JobFailed(
            f"--server {server_address}: could not reach the server within {connect_timeout:g} s "
            f"(federated.connect_timeout): {reason}"
        )
    if code not in (0, -signal.SIGTERM, 128 + signal.SIGTERM):
        found = text.split("Exit Code:", 1)[-1].split("| For more information", 1)[0].strip(" |")
        raise JobFailed(f"the site's Flower SuperNode stopped with exit code {code}: {found}")
    return code
