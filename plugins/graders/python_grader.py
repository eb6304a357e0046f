"""``python``: a grader's own code, ``grade(sample, item) -> float``, run in a sandbox.

Each example is graded in a fresh process started through ``unshare -rn`` (a user and network
namespace: the only network is a loopback that is down, so nothing can connect out, 127.0.0.1
included) with resource limits: ``RLIMIT_AS`` (``memory_mb``, default 512), ``RLIMIT_CPU`` and a
wall-clock ``timeout`` (seconds, default 10), no core files, a small file-size limit, its own
session, an empty working folder and no inherited environment. An exception, a timeout, memory
running out, a value that is not a number or outside 0..1 are that example's error, never the
job's. Files stay readable: a private mount namespace would be the next step.

Config: ``source`` (the code) or ``file`` (a path to it), ``timeout``, ``memory_mb``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tunewright import ConfigError

from .templates import name_of

MAX_SOURCE_BYTES = 256 * 1024

# Runs inside the sandbox: reads {"source", "sample", "item"} on stdin, writes one JSON line to
# the stdout it started with; what the grader prints goes to stderr.
RUNNER = r"""
import json, math, os, sys
out = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
def answer(**kw):
    out.write(json.dumps(kw)); out.flush()
try:
    payload = json.loads(sys.stdin.read())
    scope = {"__name__": "grader"}
    exec(compile(payload["source"], "grader.py", "exec"), scope)
    if not callable(scope.get("grade")):
        answer(error="the source defines no function grade(sample, item)")
    else:
        value = scope["grade"](payload["sample"], payload["item"])
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            answer(error=f"grade() returned {type(value).__name__} {value!r:.60}, not a float")
        else:
            answer(grade=float(value))
except BaseException as exc:
    answer(error=f"{type(exc).__name__}: {exc}"[:500])
"""


class SandboxError(RuntimeError):
    """One example's grading failed in the sandbox."""


@cache
def unshare_works() -> str | None:
    """``None`` when ``unshare -rn`` can start a process here, else why not."""
    tool = shutil.which("unshare")
    if tool is None:
        return "the unshare command (util-linux) is not installed"
    try:
        done = subprocess.run(
            [tool, "-rn", "--", sys.executable, "-c", "pass"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode != 0:
        return done.stderr.decode(errors="replace").strip() or f"exit code {done.returncode}"
    return None


@dataclass
class PythonGrader:
    name: str
    source: str
    timeout: float = 10.0
    memory_mb: int = 512

    def _limits(self) -> None:  # runs in the child before exec
        import resource

        os.setsid()
        memory = self.memory_mb * 1024 * 1024
        cpu = max(1, int(self.timeout) + 1)
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        payload = json.dumps({"source": self.source, "sample": dict(sample), "item": dict(item)})
        with tempfile.TemporaryDirectory(prefix="tunewright-grader-") as folder:
            process = subprocess.Popen(
                ["unshare", "-rn", "--", sys.executable, "-I", "-c", RUNNER],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=folder,
                env={"PATH": os.defpath, "HOME": folder, "PYTHONHASHSEED": "0"},
                preexec_fn=self._limits,
            )
            try:
                stdout, stderr = process.communicate(payload.encode(), timeout=self.timeout)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.communicate(timeout=10)
                raise SandboxError(
                    f"python grader {self.name!r} timed out after {self.timeout:g} s"
                ) from None
        try:
            answer = json.loads(stdout.decode(errors="replace") or "{}")
        except json.JSONDecodeError:
            answer = {}
        if "grade" in answer:
            value = answer["grade"]
            if not 0.0 <= value <= 1.0:
                raise SandboxError(f"python grader {self.name!r} returned {value!r}, outside 0..1")
            return float(value)
        if "error" in answer:
            raise SandboxError(f"python grader {self.name!r} failed: {answer['error']}")
        why = (
            f"killed by signal {-process.returncode}"
            if process.returncode < 0
            else f"exit code {process.returncode}"
        )
        tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise SandboxError(
            f"python grader {self.name!r} ended without a grade ({why}; "
            f"limits {self.timeout:g} s, {self.memory_mb} MB) {tail[0][:200]}".rstrip()
        )


def python(spec: Mapping[str, Any], build: Any = None) -> PythonGrader:
    name = name_of(spec)
    if "source" in spec:
        source = spec["source"]
    elif "file" in spec:
        path = Path(spec["file"])
        if not path.is_file():
            raise ConfigError(f"python grader {name!r}: file {str(path)!r} does not exist")
        source = path.read_text(encoding="utf-8")
    else:
        raise ConfigError(f"python grader {name!r}: give 'source' (the code) or 'file' (its path)")
    if not isinstance(source, str) or len(source.encode()) > MAX_SOURCE_BYTES:
        raise ConfigError(f"python grader {name!r}: the source must be text of at most 256 kB")
    try:
        compile(source, f"{name}.py", "exec")
    except SyntaxError as exc:
        raise ConfigError(f"python grader {name!r}: line {exc.lineno}: {exc.msg}") from exc
    try:
        timeout = float(spec.get("timeout", 10))
        memory_mb = int(spec.get("memory_mb", 512))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"python grader {name!r}: timeout and memory_mb are numbers") from exc
    if not 0 < timeout <= 600 or not 64 <= memory_mb <= 65536:
        raise ConfigError(
            f"python grader {name!r}: timeout must be in (0, 600] s and memory_mb in 64..65536"
        )
    problem = unshare_works()
    if problem is not None:
        raise ConfigError(
            f"python grader {name!r}: its sandbox needs user and network namespaces "
            f"(unshare -rn), which fail here: {problem}"
        )
    return PythonGrader(name, source, timeout, memory_mb)
