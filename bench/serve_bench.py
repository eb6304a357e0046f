"""``tunewright edge serve`` through HTTP, beside the bundle in process and (optionally)
llama.cpp's server on the same model, in one run, on loopback, with bounded loops.

    python bench/serve_bench.py --chat BUNDLE --classifier BUNDLE --json serve.json
    python bench/serve_bench.py --chat BUNDLE --llama-gguf smollm2-135m-q8_0.gguf --json serve.json
    python bench/serve_bench.py --chat BUNDLE --classifier BUNDLE --quick   # a smoke run

Figures (issue 19), each request greedy with ``ignore_eos`` so that every answer is ``--tokens``
long (llama-cpp-python's server gets the same field; the table shows the tokens it really sent):

- single-stream decode tokens/s (first to last token of a streamed answer) and time to first
  token p50/p95; peak RSS of the server process (``VmHWM``) after the single-stream runs (the
  memory target's figure: llama-cpp-python's server runs one request at a time) and again after
  the concurrent ones (here each generation in flight holds its own KV cache);
- aggregate tokens/s at 4 and 8 concurrent streams;
- HTTP overhead: single-stream tokens/s against ``generate`` on the same bundle in this process;
- classifier: requests/s at 16 concurrent clients (batched by the server) against sequential
  batch-1 requests, p95 latency;
- soak (``--soak N``): N mixed requests (chat, stream, classifier, bad ones): 5xx count and RSS
  growth from request 100 to the last.

The peer: ``CMAKE_BUILD_PARALLEL_LEVEL=2 pip install "llama-cpp-python[server]==0.3.36"`` builds it
from the sdist (about 8 minutes, for this CPU); a GGUF of the same model at the nearest bit width
(the packaged SmolLM2 GGUF is Q4_1; ``research/serving.md`` says how to make a Q8_0). The bench
starts ``python -m llama_cpp.server --model GGUF`` itself, with ``--llama-python`` where it lives
in an environment of its own (``python -m venv --system-site-packages /opt/llama-venv``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx

PROMPT = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
TARGETS = {
    "versus_peer_tokens_per_s": 1.2,
    "rss_versus_peer": 1.0,  # at most
    "aggregate_4_versus_single": 1.3,
    "http_versus_in_process": 0.9,
    "classifier_batched_versus_sequential": 2.0,
    "soak_rss_growth": 0.05,  # at most
    "adapters_size_versus_single": 1.15,  # at most
    "adapter_switch_cost": 0.05,  # at most
}


def rss_mb(pid: int, field: str = "VmHWM") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_ready(url: str, path: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server at {url} exited with {proc.returncode}")
        try:
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server at {url} did not get ready in {timeout:.0f} s")


def start_tunewright(args, chat: str | None, classifier: str | None, threads: int | None):
    cmd = [sys.executable, "-m", "tunewright.edge.runtime", "serve", "--port", "0"]
    cmd += ["--max-queue", "64", "--max-tokens-cap", str(max(args.tokens, 16))]
    cmd += ["--log-level", "error"]
    if threads:
        cmd += ["--threads", str(threads)]
    if chat:
        cmd.append(f"chat={chat}")
    if classifier:
        cmd.append(f"cls={classifier}")
    if getattr(args, "serving_adapters", None):
        cmd.append(f"multi={args.serving_adapters}")
    env = {k: v for k, v in os.environ.items() if k != "TUNEWRIGHT_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    url = json.loads(proc.stdout.readline())["serving"]
    wait_ready(url, "/v2/health/ready", proc)
    return proc, url


def start_llama(args) -> tuple[subprocess.Popen, str]:
    port = args.llama_port
    cmd = [args.llama_python, "-m", "llama_cpp.server", "--model", args.llama_gguf]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048"]
    if args.threads:
        cmd += ["--n_threads", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_ready(url, "/v1/models", proc)
    return proc, url


def stream_once(url: str, model: str, tokens: int) -> dict[str, float]:
    """One streamed greedy answer: time to first token, decode tokens/s, tokens received."""
    body = {
        "model": model,
        "messages": PROMPT,
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "ignore_eos": True,
    }
    usage = None
    started = time.perf_counter()
    first = last = None
    count = 0
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=300) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            usage = event.get("usage") or usage
            for choice in event.get("choices") or []:
                if (choice.get("delta") or {}).get("content"):
                    now = time.perf_counter()
                    first = first or now
                    last = now
                    count += 1  # one content event per token (both servers stream so)
    if first is None or last is None:
        return {"ttft": float("nan"), "tokens_per_s": 0.0, "tokens": 0, "seconds": 0.0}
    if usage and usage.get("completion_tokens"):
        count = int(usage["completion_tokens"])  # a piece of text may carry several tokens
    decode = (count - 1) / (last - first) if count > 1 and last > first else 0.0
    return {
        "ttft": first - started,
        "tokens_per_s": decode,
        "tokens": count,
        "seconds": last - started,
    }


def generator_figures(url: str, model: str, args, pid: int) -> dict[str, Any]:
    stream_once(url, model, 8)  # warm up
    single = [stream_once(url, model, args.tokens) for _ in range(args.runs)]
    out: dict[str, Any] = {
        "tokens_per_s": statistics.median(s["tokens_per_s"] for s in single),
        "ttft_p50_ms": 1000 * percentile([s["ttft"] for s in single], 0.5),
        "ttft_p95_ms": 1000 * percentile([s["ttft"] for s in single], 0.95),
        "tokens_per_answer": statistics.median(s["tokens"] for s in single),
        # serving one stream at a time, as llama-cpp-python's server does with every request
        # (one slot; the others queue): the figure the memory target compares
        "peak_rss_mb": rss_mb(pid),
    }
    for streams in (4, 8):
        results: list[dict] = []

        def one(sink: list[dict] = results) -> None:
            sink.append(stream_once(url, model, args.tokens))

        threads = [threading.Thread(target=one) for _ in range(streams)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        wall = time.perf_counter() - started
        out[f"aggregate_{streams}_tokens_per_s"] = sum(r["tokens"] for r in results) / wall
    # with 4 and 8 streams too: each generation in flight holds its own KV cache here
    out["peak_rss_concurrent_mb"] = rss_mb(pid)
    out["batched_generations"] = metric_total(url, "tunewright_serve_batched_generations_total")
    return out


def metric_total(url: str, name: str) -> float | None:
    """The sum of a Prometheus counter over its labels; ``None`` where the server has no such
    metric (llama.cpp's)."""
    try:
        text = httpx.get(url + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + "{")]
    return sum(values) if values else None


def folder_bytes(folder: str | Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


def adapter_figures(args) -> dict[str, Any]:
    """A bundle of several adapters served alone: its size against the single-model ``--chat``
    bundle, and single-stream tokens/s when every request names the same adapter against
    requests that rotate through them (each rotation round right after a same-adapter round, so
    that drift falls on both)."""
    args.serving_adapters = args.adapters
    proc, url = start_tunewright(args, None, None, args.threads)
    try:
        models = httpx.get(url + "/v1/models", timeout=10).json()["data"]
        names = sorted(m["id"] for m in models if m.get("adapter"))
        if len(names) < 2:
            raise SystemExit(
                f"--adapters: {args.adapters} serves {len(names)} adapter(s), not several"
            )
        stream_once(url, names[0], 8)  # warm up
        same: list[float] = []
        rotating: list[float] = []
        for _ in range(args.runs):
            same += [stream_once(url, names[0], args.tokens)["tokens_per_s"] for _ in names]
            rotating += [stream_once(url, name, args.tokens)["tokens_per_s"] for name in names]
        rss = rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(120)
    out: dict[str, Any] = {
        "adapters": names,
        "bundle_mb": folder_bytes(args.adapters) / 2**20,
        "same_adapter_tokens_per_s": statistics.median(same),
        "rotating_tokens_per_s": statistics.median(rotating),
        "peak_rss_mb": rss,
    }
    out["switch_cost"] = 1 - out["rotating_tokens_per_s"] / out["same_adapter_tokens_per_s"]
    if args.chat:
        out["single_bundle_mb"] = folder_bytes(args.chat) / 2**20
        out["size_versus_single"] = out["bundle_mb"] / out["single_bundle_mb"]
    return out


def in_process(bundle: str, args) -> float:
    """``generate`` tokens/s on the same bundle, in this process, greedy, EOS ignored."""
    from tunewright.edge.runtime import load_bundle

    predictor = load_bundle(bundle, threads=args.threads)
    ids = predictor.prompt_ids(PROMPT)
    figures = []
    for _ in range(args.runs + 1):
        started = time.perf_counter()
        first = None
        count = 0
        for _token in predictor.generate_ids(ids, max_new_tokens=args.tokens, stop_at_eos=False):
            first = first or time.perf_counter()
            count += 1
        if first and count > 1:
            figures.append((count - 1) / (time.perf_counter() - first))
        del started
    return statistics.median(figures[1:] or figures)


def classifier_figures(url: str, args) -> dict[str, Any]:
    def infer(client: httpx.Client, i: int) -> float:
        body = {
            "inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"a fine film {i}"]}
            ]
        }
        started = time.perf_counter()
        client.post(url + "/v2/models/cls/infer", json=body, timeout=60).raise_for_status()
        return time.perf_counter() - started

    n = args.classifier_requests
    with httpx.Client() as client:
        infer(client, -1)
        started = time.perf_counter()
        sequential = [infer(client, i) for i in range(n)]
        sequential_rps = n / (time.perf_counter() - started)
    latencies: list[float] = []

    def worker(k: int) -> None:
        with httpx.Client() as client:
            for i in range(n // 16):
                latencies.append(infer(client, k * 1000 + i))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(16)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    concurrent_rps = len(latencies) / (time.perf_counter() - started)
    return {
        "sequential_rps": sequential_rps,
        "sequential_p95_ms": 1000 * percentile(sequential, 0.95),
        "concurrent16_rps": concurrent_rps,
        "concurrent16_p95_ms": 1000 * percentile(latencies, 0.95),
    }


def soak(url: str, pid: int, n: int, has_chat: bool, has_cls: bool) -> dict[str, Any]:
    statuses: dict[str, int] = {}
    rss_at_100 = None
    kinds = [k for k, ok in (("chat", has_chat), ("stream", has_chat), ("cls", has_cls)) if ok]
    kinds += ["bad-json", "unknown-model"]
    with httpx.Client(timeout=120) as client:
        for i in range(n):
            kind = kinds[i % len(kinds)]
            if kind in ("chat", "stream"):
                body = {
                    "model": "chat",
                    "messages": PROMPT,
                    "max_tokens": 16,
                    "stream": kind == "stream",
                }
                r = client.post(url + "/v1/chat/completions", json=body)
            elif kind == "cls":
                body = {
                    "inputs": [
                        {"name": "text", "shape": [1], "datatype": "BYTES", "data": [f"text {i}"]}
                    ]
                }
                r = client.post(url + "/v2/models/cls/infer", json=body)
            elif kind == "bad-json":
                r = client.post(
                    url + "/v1/chat/completions",
                    content=b"{",
                    headers={"Content-Type": "application/json"},
                )
            else:
                r = client.post(
                    url + "/v1/chat/completions", json={"model": "nope", "messages": PROMPT}
                )
            statuses[str(r.status_code)] = statuses.get(str(r.status_code), 0) + 1
            if i == 99:
                rss_at_100 = rss_mb(pid, "VmRSS")
    rss_end = rss_mb(pid, "VmRSS")
    growth = (rss_end / rss_at_100 - 1) if rss_at_100 and rss_end else None
    return {
        "requests": n,
        "statuses": statuses,
        "server_errors": sum(v for k, v in statuses.items() if k.startswith("5")),
        "rss_at_100_mb": rss_at_100,
        "rss_end_mb": rss_end,
        "rss_growth": growth,
    }


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    ours = report.get("tunewright") or {}
    peer = report.get("llama_cpp") or {}
    found: dict[str, Any] = {}

    def ratio(a, b):
        return a / b if a and b else None

    checks = {
        "versus_peer_tokens_per_s": (
            ratio(ours.get("tokens_per_s"), peer.get("tokens_per_s")),
            ">=",
        ),
        "rss_versus_peer": (ratio(ours.get("peak_rss_mb"), peer.get("peak_rss_mb")), "<="),
        "aggregate_4_versus_single": (
            ratio(ours.get("aggregate_4_tokens_per_s"), ours.get("tokens_per_s")),
            ">=",
        ),
        "http_versus_in_process": (
            ratio(ours.get("tokens_per_s"), report.get("in_process_tokens_per_s")),
            ">=",
        ),
        "classifier_batched_versus_sequential": (
            ratio(
                (report.get("classifier") or {}).get("concurrent16_rps"),
                (report.get("classifier") or {}).get("sequential_rps"),
            ),
            ">=",
        ),
        "soak_rss_growth": ((report.get("soak") or {}).get("rss_growth"), "<="),
        "adapters_size_versus_single": (
            (report.get("adapters") or {}).get("size_versus_single"),
            "<=",
        ),
        "adapter_switch_cost": ((report.get("adapters") or {}).get("switch_cost"), "<="),
    }
    for name, (value, way) in checks.items():
        if value is None:
            continue
        target = TARGETS[name]
        met = value >= target if way == ">=" else value <= target
        found[name] = {"value": round(value, 3), "target": f"{way} {target}", "met": met}
    if "soak" in report:
        found["soak_no_5xx"] = {
            "value": report["soak"]["server_errors"],
            "target": "== 0",
            "met": report["soak"]["server_errors"] == 0,
        }
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chat", help="a chat bundle (int8 or int4 SmolLM2-135M for the figures)")
    parser.add_argument("--classifier", help="a text classifier bundle")
    parser.add_argument(
        "--llama-gguf", help="a GGUF of the same model: runs llama.cpp's server beside"
    )
    parser.add_argument("--llama-port", type=int, default=8765)
    parser.add_argument(
        "--llama-python",
        default=sys.executable,
        help="the python of an environment with llama-cpp-python[server] (its server's pins "
        "need not be the stack's)",
    )
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--classifier-requests", type=int, default=320)
    parser.add_argument("--soak", type=int, default=1000, help="mixed requests (0: none)")
    parser.add_argument(
        "--adapters",
        help="a bundle of several chat adapters on one base (tunewright export RUN_A RUN_B ...): "
        "its size against --chat's, and the cost of switching adapters between requests",
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run: few tokens, few runs")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.tokens, args.runs, args.classifier_requests, args.soak = 8, 2, 32, 120
    if not args.chat and not args.classifier:
        parser.error("give --chat, --classifier or both")
    report: dict[str, Any] = {"tokens": args.tokens, "runs": args.runs}
    proc, url = start_tunewright(args, args.chat, args.classifier, args.threads)
    try:
        if args.chat:
            report["tunewright"] = generator_figures(url, "chat", args, proc.pid)
        if args.classifier:
            report["classifier"] = classifier_figures(url, args)
        if args.soak:
            report["soak"] = soak(url, proc.pid, args.soak, bool(args.chat), bool(args.classifier))
    finally:
        proc.terminate()
        report["exit_code"] = proc.wait(120)
    if args.chat:
        report["in_process_tokens_per_s"] = in_process(args.chat, args)
    if args.adapters:
        report["adapters"] = adapter_figures(args)
    if args.llama_gguf:
        peer, peer_url = start_llama(args)
        try:
            model = httpx.get(peer_url + "/v1/models", timeout=10).json()["data"][0]["id"]
            report["llama_cpp"] = generator_figures(peer_url, model, args, peer.pid)
        finally:
            peer.terminate()
            peer.wait(60)
    report["targets"] = verdicts(report)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
