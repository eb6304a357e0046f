"""What ``federate server`` and ``federate site`` start ends with them, even on SIGKILL: the
guard (:mod:`tunewright.plugins.federated.guard`) around each Flower process, with a grandchild
that moved to a session of its own (as Flower's superexec and per-message processes may)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tunewright.plugins.federated import deploy

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="prctl and /proc are Linux's"
)

# a parent that starts a guarded shell; the shell starts a grandchild in a new session and waits
PARENT = """
import json, subprocess, sys, time
from pathlib import Path
from tunewright.plugins.federated import deploy
proc = deploy.start_guarded(["sh", "-c", "setsid sleep 300 & sleep 300"], {"PATH": "/usr/bin:/bin"}, Path(sys.argv[1]))
deadline = time.monotonic() + 60
while len(deploy.descendants(proc.pid)) < 3 and time.monotonic() < deadline:
    time.sleep(0.1)
print(json.dumps(deploy.descendants(proc.pid) + [proc.pid]), flush=True)
time.sleep(300)
"""


def wait_gone(pids, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [pid for pid in pids if deploy.alive(pid)]:
            return []
        time.sleep(0.2)
    return [pid for pid in pids if deploy.alive(pid)]


@pytest.mark.parametrize("how", ["kill the parent", "kill the parent's process group"])
def test_what_a_killed_command_started_ends_with_it(tmp_path, how):
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, str(tmp_path / "log")],
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    family = []
    try:
        family = json.loads(parent.stdout.readline())
        assert len(family) >= 4, family  # the guard, the shell, its sleep, the setsid sleep
        assert all(deploy.alive(pid) for pid in family)
        if how == "kill the parent":
            parent.kill()
        else:  # what a scheduler or Ctrl-C does: the guard and Flower live in sessions of their own
            os.killpg(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert wait_gone(family, 20) == []
    finally:
        parent.kill()
        for pid in family:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
