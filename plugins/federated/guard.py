"""Run a command so that it, and everything it starts, ends with the tunewright process that
started it, even when that process is killed with SIGKILL.

    python .../plugins/federated/guard.py PARENT_PID COMMAND...

``flower-supernode`` starts ``flower-superexec``, which starts a ``flwr-clientapp`` per message;
``flower-superlink`` starts its own superexec and server app. ``PR_SET_PDEATHSIG`` on the process
we start reaches that process only, and killing a process group misses what moved to a session of
its own. So the command runs under this small guard, which

- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever below it loses its parent is
  re-parented to the guard, not to PID 1, so the guard always finds all of it;
- gets SIGTERM when its parent dies (``PR_SET_PDEATHSIG``, armed first thing; it follows the
  thread that started the guard, so start it from the main thread or a long-lived one) and, in
  case that was missed, polls its parent id;
- on SIGTERM, SIGINT, its parent's death or its command's end stops every process below it
  (TERM, then KILL after a grace period) and exits with the command's code (143 when stopped).

Linux only (prctl); elsewhere the command runs as it is (:func:`guarded`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 5.0


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def supported() -> bool:
    return sys.platform.startswith("linux")


def guarded(argv: list[str]) -> list[str]:
    """``argv`` run under the guard, for this process as its parent."""
    if not supported():
        return argv
    # run as a file, not a module: importing the tunewright package would cost seconds
    return [sys.executable, str(Path(__file__).resolve()), str(os.getpid()), *argv]


def below(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _reap(skip: int = 0) -> None:
    """Collect the exit status of adopted children that ended (not ``skip``: Popen's own)."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            pid = int(stat.parent.name)
            if int(fields[1]) == me and fields[0] == "Z" and pid != skip:
                os.waitpid(pid, os.WNOHANG)
        except (OSError, IndexError, ValueError):
            continue


def _stop_all(grace: float = GRACE_SECONDS) -> None:
    me = os.getpid()
    for pid in below(me):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        _reap()
        if not below(me):
            return
        time.sleep(0.1)
    for pid in below(me):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and below(me):
        _reap()
        time.sleep(0.1)


class _Stopped(Exception):
    pass


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]

    def stopped(signum, frame):
        raise _Stopped

    signal.signal(signal.SIGTERM, stopped)
    signal.signal(signal.SIGINT, stopped)
    signal.signal(signal.SIGHUP, stopped)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    code = 143
    try:
        if os.getppid() != parent:  # the parent died before the death signal was armed (no
            # preexec_fn arms it earlier: the parent has threads, and fork + Python code may deadlock)
            return code
        proc = subprocess.Popen(command)
        while True:
            found = proc.poll()
            if found is not None:
                code = found if found >= 0 else 128 - found
                break
            if os.getppid() != parent:
                break
            _reap(skip=proc.pid)
            time.sleep(0.5)
    except _Stopped:
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _stop_all()
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
