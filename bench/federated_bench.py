"""Federated fine-tuning figures, side by side in one run (issue 8).

    python bench/federated_bench.py --json fed.json            # smollm2-135m-instruct, chatterbot by category
    python bench/federated_bench.py --quick --json fed.json    # a tiny random encoder on synthetic data: a smoke run

What it measures, every training a ``tunewright`` subprocess of its own:

1. **Bytes per round per site**, as Flower counts them (``ArrayRecord.count_bytes``), for the
   adapter-only state that travels (``fedavg``: A, B and head; ``ffa``: B and head) against the
   whole model's parameters. Target: at least 100x fewer for LoRA on smollm2-135m-instruct.
2. **Final held-out metric** on one central held-out set, for: federated training over 3 non-IID
   sites (``fedavg`` and ``ffa``), centralized training on the pooled data with the same total
   optimizer steps (rounds x local steps x sites), and each site training alone for its own share
   (rounds x local steps). Target: federated within 2 points of centralized.
3. **SecAgg+**: ``fedavg`` again through Flower's secure aggregation (``--no-secure`` skips it):
   its bytes (every stage's keys, shares and masked vectors), final metric and round times.
4. **Wall time per round**, in simulation (Ray workers keep their model between rounds) and in a
   deployment on loopback (Flower starts a fresh ``flwr-clientapp`` process per message), split
   into training (the slowest site's), evaluation (the sites' of the previous aggregate and the
   server's central one) and the rest, ``overhead_share``: Flower's messaging, process start-up
   and model loading (``process_age_seconds`` and ``load_seconds`` in each reply).

Run it on an otherwise idle machine; figures taken under load are not the product's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
TW = [sys.executable, "-m", "tunewright"]


def sh(args: list[str], log: Path, timeout: float = 3600) -> float:
    started = time.monotonic()
    with log.open("wb") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=timeout)
        except BaseException:  # a timeout, Ctrl-C, SIGTERM: let the job stop what it started
            proc.terminate()  # (a tunewright command unwinds on SIGTERM; SIGKILL would orphan Flower's)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    if code != 0:
        raise SystemExit(
            f"{' '.join(map(str, args[2:5]))} failed ({code}); see {log}:\n"
            + log.read_text(errors="replace")[-3000:]
        )
    return time.monotonic() - started


def _terminate(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwind: every finally stops its processes


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def tiny_model(folder: Path) -> Path:
    """A 2-layer BERT with MiniLM's tokenizer (as tests/conftest.py builds it)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunewright import get_plugin_manager

    source = get_plugin_manager().registries.models["minilm-l6"].resolve()
    tokenizer = AutoTokenizer.from_pretrained(source)
    torch.manual_seed(0)
    model = BertModel(
        BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=128,
            hidden_dropout_prob=0.0,
            attention_probs_dropout_prob=0.0,
        )
    )
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def quick_data(folder: Path) -> tuple[Path, Path, dict]:
    rng = random.Random(0)
    words = {
        "positive": ["great", "lovely", "excellent"],
        "negative": ["awful", "terrible", "sad"],
        "neutral": ["okay", "average", "plain"],
    }
    rows = [
        {"text": f"it was {rng.choice(words[label])} number {i}", "label": label}
        for i, label in enumerate(sorted(words)[i % 3] for i in range(240))
    ]
    rng.shuffle(rows)
    return (
        write_jsonl(folder / "train.jsonl", rows[:200]),
        write_jsonl(folder / "validation.jsonl", rows[200:]),
        {
            "task": "classification",
            "lora": {"r": 4, "alpha": 8},
            "data": {"max_length": 32},
            "partition": {"partition": "dirichlet", "dirichlet_alpha": 0.3},
        },
    )


def chatterbot_data(folder: Path, model: str, max_length: int = 256) -> tuple[Path, Path, dict]:
    """The quickstart's chatterbot conversations, those over ``max_length`` tokens dropped (as
    train_bench.py does: validation refuses them rather than truncating), split 90/10 seeded."""
    from transformers import AutoTokenizer

    import tunewright
    from tunewright.quickstart import chatterbot_pairs

    path = (
        model
        if Path(model).is_dir()
        else tunewright.get_plugin_manager().registries.models[model].resolve()
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    rows = [
        row
        for row in chatterbot_pairs()
        if len(tokenizer.apply_chat_template(row["messages"])) <= max_length
    ]
    random.Random(0).shuffle(rows)
    cut = len(rows) // 10
    return (
        write_jsonl(folder / "train.jsonl", rows[cut:]),
        write_jsonl(folder / "validation.jsonl", rows[:cut]),
        {
            "task": "chat",
            "lora": {"r": 8, "alpha": 16},
            "data": {"max_length": max_length},
            "partition": {"partition": "field", "partition_field": "category"},
        },
    )


def config(
    folder: Path,
    name: str,
    model: str,
    train: Path,
    validation: Path,
    spec: dict,
    args,
    *,
    runner: str,
    steps: int | None = None,
    **federated,
) -> Path:
    raw = {
        "model": model,
        "task": spec["task"],
        "method": "lora",
        "lora": spec["lora"],
        "data": {"train": str(train), "validation": str(validation), **spec["data"]},
        "training": {"batch_size": 8, "learning_rate": args.learning_rate, "logging_steps": 5},
        "output": str(folder / name),
        "runner": runner,
        "seed": 42,
    }
    if steps:
        raw["training"]["max_steps"] = steps
    if runner == "federated":
        raw["federated"] = {
            "rounds": args.rounds,
            "local_steps": args.local_steps,
            "sites": 3,
            "min_sites": 2,
            **spec["partition"],
            **federated,
        }
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def final(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())["final"]


def rounds_of(run: Path) -> list[dict]:
    return [
        json.loads(line) for line in (run / "federated" / "rounds.jsonl").read_text().splitlines()
    ]


def round_times(run: Path) -> dict:
    rows = rounds_of(run)
    seconds = [r["seconds"] for r in rows]

    def slowest_site(row: dict, key: str) -> float:
        return max((s.get(key, 0.0) for s in row["sites"] if s["status"] == "ok"), default=0.0)

    training = [slowest_site(r, "train_seconds") for r in rows]
    # the sites evaluate the previous aggregate before they train (in the same message), the
    # server then evaluates the new one on its central set: evaluation, not overhead
    evaluating = [slowest_site(r, "evaluate_seconds") + r.get("central_seconds", 0.0) for r in rows]
    ages = [s.get("process_age_seconds") for r in rows for s in r["sites"] if s["status"] == "ok"]
    loads = [s.get("load_seconds") for r in rows for s in r["sites"] if s["status"] == "ok"]
    mean = sum(seconds) / len(seconds)
    return {
        "round_seconds": [round(s, 2) for s in seconds],
        "mean_round_seconds": round(mean, 2),
        "slowest_site_training_seconds": [round(t, 2) for t in training],
        "not_training_share": round(1 - sum(training) / sum(seconds), 3),
        "evaluation_share": round(sum(evaluating) / sum(seconds), 3),
        # neither training nor evaluating: Flower's messaging, process start-up, model loading
        "overhead_share": round(1 - (sum(training) + sum(evaluating)) / sum(seconds), 3),
        "site_process_age_seconds_mean": round(sum(ages) / len(ages), 2) if ages else None,
        "site_load_seconds_mean": round(sum(loads) / len(loads), 2) if loads else None,
    }


def bytes_figures(run: Path) -> dict:
    summary = json.loads((run / "federated" / "summary.json").read_text())
    first = rounds_of(run)[0]["sites"]
    per_site = max(s["received_bytes"] for s in first)
    return {
        "received_bytes_per_site_per_round": per_site,
        "sent_bytes_per_site_per_round": max(s["sent_bytes"] for s in first),
        "full_model_bytes": summary["full_model_bytes"],
        "full_model_over_adapter": round(summary["full_model_bytes"] / per_site, 1),
    }


def bytes_without_training(model: str, spec: dict) -> dict:
    """What one site receives (and sends) per round for each scheme and transfer dtype, as Flower
    counts it (``ArrayRecord.count_bytes``), from the bench job's model and LoRA settings: no
    training needed, so it is taken even with ``--bytes-only``."""
    import numpy as np

    import tunewright
    from tunewright.config import load_config
    from tunewright.plugins.federated.federation import cast_floats, to_arrays
    from tunewright.plugins.federated.site import travelling_state

    pm = tunewright.get_plugin_manager()
    config = load_config(
        {
            "model": model,
            "task": spec["task"],
            "method": "lora",
            "lora": spec["lora"],
            "data": {"train": "unused.jsonl"},
            "output": "unused",
        },
        pm.registries,
    )
    task = pm.registries.get("tasks", spec["task"], key="task")
    method = pm.registries.get("methods", "lora", key="method")
    path = model if Path(model).is_dir() else pm.registries.models[model].resolve()
    # the quick run's labels (quick_data): the head it trains has one row per label
    labels = ["negative", "neutral", "positive"] if spec["task"] == "classification" else None
    base = task.load_model(str(path), labels, config)
    full = sum(
        p.numel() * p.element_size() for p in base.parameters()
    )  # the base model alone, fp32
    net = method.apply(base, config.section("lora"), task.model_kind)
    out: dict = {"full_model_bytes": full, "lora": spec["lora"]}
    for scheme in ("fedavg", "ffa"):
        state = travelling_state(method, net, scheme)
        for dtype in ("float32", "float16"):
            sent = to_arrays(cast_floats(state, np.dtype(dtype))).count_bytes()
            out[f"{scheme}_{dtype}"] = {
                "bytes_per_site_per_round_each_way": sent,
                "full_model_over_adapter": round(full / sent, 1),
            }
    return out


def deployment(folder: Path, fed_config: Path, sites: list[Path], timeout: float) -> dict:
    """Server and three sites on loopback, each a process of its own; their figures."""
    sys.path.insert(0, str(HERE.parent))
    from tunewright.plugins.federated import deploy

    raw = yaml.safe_load(fed_config.read_text())
    port = deploy.free_port()
    raw["federated"]["server"] = {"host": "127.0.0.1", "port": port, "insecure": True}
    raw["output"] = str(folder / "deployed")
    # every site on this one machine: each gets its share of the cores, as the simulation's
    # cpus_per_site does (a real site has a machine of its own and uses all of it)
    raw["training"]["num_threads"] = max(1, (os.cpu_count() or 1) // len(sites))
    path = folder / "deployed.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    procs = []
    try:
        server = subprocess.Popen(
            [*TW, "federate", "server", str(path), "--timeout", str(timeout)],
            stdout=(folder / "server.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        procs.append(server)
        for k, data in enumerate(sites):
            procs.append(
                subprocess.Popen(
                    [
                        *TW,
                        "federate",
                        "site",
                        str(path),
                        "--data",
                        str(data),
                        "--server",
                        f"127.0.0.1:{port}",
                        "--insecure",
                        "--name",
                        f"site-{k}",
                        "--workdir",
                        str(folder / f"site-{k}"),
                    ],
                    stdout=(folder / f"site-{k}.log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        server.wait(timeout=timeout + 60)
        if server.returncode != 0:
            raise SystemExit(f"deployment failed; see {folder / 'server.log'}")
        # the sites end by themselves once the server closed (exit 0), within connect_timeout
        exit_codes = []
        for proc in procs[1:]:
            try:
                exit_codes.append(
                    proc.wait(timeout=raw["federated"].get("connect_timeout", 60.0) + 10)
                )
            except subprocess.TimeoutExpired:
                exit_codes.append(None)
    finally:
        for proc in procs:
            deploy.stop(proc)
    return {
        **round_times(folder / "deployed"),
        "final": final(folder / "deployed"),
        "site_exit_codes": exit_codes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="tiny random encoder, synthetic data, 2 rounds"
    )
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--local-steps", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--no-deployment", action="store_true", help="skip the loopback deployment")
    parser.add_argument(
        "--no-secure", action="store_true", help="skip the fedavg run through SecAgg+"
    )
    parser.add_argument(
        "--strategy",
        default=None,
        help="federated.strategy of every federated run (default: the job's, fedavg), e.g. fedavgm",
    )
    parser.add_argument(
        "--server-learning-rate",
        type=float,
        default=None,
        help="federated.server_learning_rate of every federated run (fedadam, fedavgm)",
    )
    parser.add_argument(
        "--bytes-only",
        action="store_true",
        help="only the bytes per round per site (each scheme, float32 and float16): no training",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep the runs")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    args.rounds = args.rounds or (2 if args.quick else 5)
    args.local_steps = args.local_steps or (3 if args.quick else 10)
    args.learning_rate = args.learning_rate or (5e-3 if args.quick else 2e-4)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    folder = args.keep or Path(tempfile.mkdtemp(prefix="federated-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    model = str(tiny_model(folder / "tiny")) if args.quick else args.model
    if args.quick:
        train, validation, spec = quick_data(folder / "data")
    else:
        train, validation, spec = chatterbot_data(folder / "data", model)
    total = args.rounds * args.local_steps * 3
    out: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "model": "tiny-bert (random)" if args.quick else args.model,
        "rounds": args.rounds,
        "local_steps": args.local_steps,
        "sites": 3,
        "total_steps": total,
        "bytes": bytes_without_training(model, spec),
    }
    if args.bytes_only:
        text = json.dumps(out["bytes"], indent=2)
        print(text)
        if args.json:
            args.json.write_text(text + "\n")
        return
    walls = {}
    # fedavg-secure: fedavg through SecAgg+ (its four stages counted in the bytes); max_weight above
    # any site's example count
    schemes = {"fedavg": {}, "ffa": {}}
    if not args.no_secure:
        schemes["fedavg-secure"] = {"secure_aggregation": {"max_weight": 10_000}}
    server = {
        key: value
        for key, value in (
            ("strategy", args.strategy),
            ("server_learning_rate", args.server_learning_rate),
        )
        if value
    }
    out["server_strategy"] = server or {"strategy": "fedavg"}
    for scheme, extra in schemes.items():
        path = config(
            folder,
            f"federated-{scheme}",
            model,
            train,
            validation,
            spec,
            args,
            runner="federated",
            aggregation=scheme.split("-")[0],
            **server,
            **extra,
        )
        walls[scheme] = sh([*TW, "federate", str(path)], folder / f"federated-{scheme}.log")
        run = folder / f"federated-{scheme}"
        out[f"federated_{scheme.replace('-', '_')}"] = {
            "final": final(run),
            "bytes": bytes_figures(run),
            "simulation": round_times(run),
            "wall_seconds": round(walls[scheme], 1),
        }
    path = config(
        folder, "centralized", model, train, validation, spec, args, runner="local", steps=total
    )
    sh([*TW, "train", str(path)], folder / "centralized.log")
    out["centralized"] = {"final": final(folder / "centralized"), "steps": total}
    sites = sorted((folder / "federated-fedavg" / "federated" / "sites").glob("site-*/train.jsonl"))
    out["site_alone"] = {}
    for k, data in enumerate(sites):
        path = config(
            folder,
            f"alone-{k}",
            model,
            data,
            validation,
            spec,
            args,
            runner="local",
            steps=args.rounds * args.local_steps,
        )
        sh([*TW, "train", str(path)], folder / f"alone-{k}.log")
        out["site_alone"][f"site-{k}"] = final(folder / f"alone-{k}")
    if not args.no_deployment:
        out["deployment"] = deployment(
            folder, folder / "federated-fedavg.yaml", sites, timeout=3600
        )
    metric = "accuracy" if spec["task"] == "classification" else "mean_token_accuracy"
    out["metric"] = metric
    out["gap_points"] = {
        name: round(
            100 * (out["centralized"]["final"][metric] - out[f"federated_{name}"]["final"][metric]),
            2,
        )
        for name in (s.replace("-", "_") for s in schemes)
    }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
