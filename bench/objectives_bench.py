"""DPO and RFT against TRL's DPOTrainer and GRPOTrainer, and distillation for the edge.

    python bench/objectives_bench.py dpo --trl-python /opt/trl-venv/bin/python --json dpo.json
    python bench/objectives_bench.py rft --trl-python /opt/trl-venv/bin/python --json rft.json
    python bench/objectives_bench.py distill --json distill.json
    python bench/objectives_bench.py dpo --quick --model DIR          # a smoke run on a tiny model

Each side trains in a process of its own (so that its peak RSS is its own), on the same data,
model, LoRA rank, beta, group size and steps; the held-out figures are computed by tunewright's
own code for both sides (reward accuracy from the adapter against the adapter switched off; the
grade with the same ``string_check`` grader), so only the training differs.

- ``dpo``: pairs where the preferred answer is checkably better (the right capital, politely; the
  wrong one, rudely). Issue 20's targets: held-out reward accuracy from ~0.5 to >= 0.8, within 2
  points of TRL's; throughput >= 1.5x TRL's (pairs per second), peak RSS <= 0.7x.
- ``rft``: two-digit additions graded by ``string_check`` (``like`` the sum), from the SFT
  model. Targets: held-out grade +15 points; throughput >= 1.2x TRL's (completions per second).
- ``distill``: the teacher (``--teacher``, a tuned run; default: the base) into a student with
  half its layers; grade both on held-out prompts (``--grader``) and time both int8 bundles with
  ``tunewright edge bench``. Targets: student keeps >= 90% of the teacher's grade; bundle >= 1.8x
  faster.

TRL goes in an environment of its own that sees the stack's torch, transformers and peft, with
pins that install beside them (a plain ``pip install trl`` silently picks trl 0.11)::

    pip freeze | grep -v -e '^-e' -e '^tunewright' -e '^fsspec==' -e '^datasets==' > stack.txt
    python -m venv --system-site-packages /opt/trl-venv
    /opt/trl-venv/bin/pip install -c stack.txt 'trl[peft]==1.16.0' datasets==5.0.1 fsspec==2026.6.0

Precision: by default each side runs as its users get it (``--precision default``): tunewright's
``auto`` (bf16 where the CPU has bf16 instructions, else fp32), TRL's configs' ``bf16=True``; TRL
also checkpoints activations by default (``gradient_checkpointing=True``), which its JSON reports.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = "smollm2-135m-instruct"
CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid",
    "Portugal": "Lisbon", "Austria": "Vienna", "Poland": "Warsaw", "Greece": "Athens",
    "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Ireland": "Dublin",
    "Hungary": "Budapest", "Belgium": "Brussels", "Denmark": "Copenhagen", "Japan": "Tokyo",
}  # fmt: skip


def preference_pairs(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    countries = sorted(CAPITALS)
    rows = []
    for _ in range(n):
        country = rng.choice(countries)
        wrong = CAPITALS[rng.choice([c for c in countries if c != country])]
        rows.append(
            {
                "input": {
                    "messages": [{"role": "user", "content": f"What is the capital of {country}?"}]
                },
                "preferred_output": [
                    {
                        "role": "assistant",
                        "content": f"The capital of {country} is {CAPITALS[country]}.",
                    }
                ],
                "non_preferred_output": [
                    {"role": "assistant", "content": f"Whatever. It's {wrong}, obviously."}
                ],
            }
        )
    return rows


def additions(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(10, 49), rng.randint(10, 49)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is {a} + {b}? Answer with the number."}
                ],
                "answer": str(a + b),
            }
        )
    return rows


GRADER = {
    "type": "string_check",
    "name": "sum",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "like",
}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def resolve(model: str) -> str:
    from tunewright import get_plugin_manager

    models = get_plugin_manager().registries.models
    return str(models[model].resolve()) if model in models else model


# -- one side, in a child process ------------------------------------------------------------------


def tunewright_side(spec: dict) -> dict:
    from tunewright import get_plugin_manager, load_config, run_job

    pm = get_plugin_manager()
    started = time.perf_counter()
    result = run_job(load_config(spec["config"], pm.registries), pm, echo=lambda _: None)
    seconds = time.perf_counter() - started
    figures = json.loads((Path(spec["config"]["output"]) / "eval.json").read_text())
    return {
        "train_seconds": result.train_seconds,
        "wall_seconds": seconds,
        "baseline": figures["baseline"],
        "final": figures["final"],
    }


TRL_DPO = r"""
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer
spec = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(spec["train"])]
data = Dataset.from_list([{"prompt": r["input"]["messages"], "chosen": r["preferred_output"],
                           "rejected": r["non_preferred_output"]} for r in rows])
tok = AutoTokenizer.from_pretrained(spec["model"]); tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(spec["model"])
args = DPOConfig(output_dir=spec["out"], beta=spec["beta"], learning_rate=spec["lr"],
                 per_device_train_batch_size=spec["batch"], max_steps=spec["steps"], report_to=[],
                 logging_steps=5, save_strategy="no", use_cpu=True, **spec["precision"],
                 max_length=spec["max_length"], seed=spec["seed"])
trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                     peft_config=LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"],
                                            target_modules="all-linear", task_type="CAUSAL_LM"))
t = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - t
trainer.model.save_pretrained(spec["out"] + "/adapter")
import resource
print(json.dumps({"train_seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing}))
"""

TRL_GRPO = r"""
import json, sys, time
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import GRPOConfig, GRPOTrainer
spec = json.loads(sys.argv[1])
rows = [json.loads(l) for l in open(spec["train"])]
data = Dataset.from_list([{"prompt": r["messages"], "answer": r["answer"]} for r in rows])
def sum_reward(prompts, completions, answer, **_):
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [1.0 if a in t else 0.0 for t, a in zip(texts, answer)]
tok = AutoTokenizer.from_pretrained(spec["model"]); tok.pad_token = tok.pad_token or tok.eos_token
model = AutoModelForCausalLM.from_pretrained(spec["model"])
args = GRPOConfig(output_dir=spec["out"], beta=spec["beta"], learning_rate=spec["lr"],
                  per_device_train_batch_size=spec["batch"] * spec["k"], num_generations=spec["k"],
                  max_completion_length=spec["max_tokens"], max_steps=spec["steps"], report_to=[],
                  logging_steps=5, save_strategy="no", use_cpu=True, **spec["precision"],
                  loss_type="grpo", seed=spec["seed"])
trainer = GRPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                      reward_funcs=sum_reward,
                      peft_config=LoraConfig(r=spec["r"], lora_alpha=2 * spec["r"],
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
t = time.perf_counter(); trainer.train(); seconds = time.perf_counter() - t
trainer.model.save_pretrained(spec["out"] + "/adapter")
import resource
print(json.dumps({"train_seconds": seconds,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing}))
"""


def child(python: str, code: str, spec: dict, timeout: float) -> dict:
    """Run ``code`` in a child; its last stdout line is JSON with its own peak RSS."""
    done = subprocess.run(
        [python, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=timeout
    )
    if done.returncode != 0:
        raise SystemExit(f"{python} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


OURS = (
    "import json, sys; sys.path.insert(0, {here!r}); import objectives_bench as b; "
    "import resource; out = b.tunewright_side(json.loads(sys.argv[1])); "
    "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
    "print(json.dumps(out))"
)


def ours(spec: dict, timeout: float) -> dict:
    return child(sys.executable, OURS.format(here=str(Path(__file__).parent)), spec, timeout)


# -- held-out figures of a TRL adapter, by tunewright's code ----------------------------------------


def adapter_figures(task: str, model: str, adapter: Path, config: dict, held: Path) -> dict:
    """Load the base with the TRL adapter as tunewright's task does and measure the held-out data."""
    import torch
    from peft import PeftModel

    from tunewright import get_plugin_manager, load_config

    pm = get_plugin_manager()
    job = load_config(config, pm.registries)
    task_object = pm.registries.tasks[task]
    tokenizer = task_object.load_tokenizer(model)
    rows = [json.loads(line) for line in held.read_text().splitlines()]
    for row in rows:
        task_object.validate(row, "bench", job)
    base = task_object.load_model(model, None, job, tokenizer=tokenizer)
    tuned = PeftModel.from_pretrained(base, str(adapter)).eval()
    features = [task_object.tokenize(row, tokenizer) for row in rows]
    batches = [
        task_object.collate(features[i : i + 8], tokenizer) for i in range(0, len(features), 8)
    ]
    with torch.no_grad():
        return task_object.metrics(tuned, batches)


def trl_precision(args) -> dict:
    """TRL's precision arguments: none at ``--precision default`` (its configs' own default)."""
    return {} if args.precision == "default" else {"bf16": args.precision == "bf16"}


# -- the benches -------------------------------------------------------------------------------------


def lora_job(args, task: str, train: Path, validation: Path, out: Path, **section) -> dict:
    config = {
        "model": args.model,
        "task": task,
        "method": "lora",
        "lora": {"r": args.rank, "alpha": 2 * args.rank},
        "data": {"train": str(train), "validation": str(validation), "max_length": args.max_length},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "precision": args.precision if args.precision != "default" else "auto",
            "num_threads": args.threads,
        },
        "output": str(out),
        "seed": args.seed,
        task: section,
    }
    return config


def bench_dpo(args, work: Path) -> dict:
    train = write_jsonl(work / "train.jsonl", preference_pairs(args.examples, 0))
    held = write_jsonl(work / "validation.jsonl", preference_pairs(args.held_out, 1))
    config = lora_job(args, "dpo", train, held, work / "ours", beta=args.beta)
    report: dict[str, Any] = {"ours": ours({"config": config}, args.timeout)}
    report["ours"]["pairs_per_second"] = (
        args.steps * args.batch_size / report["ours"]["train_seconds"]
    )
    if args.trl_python:
        spec = {
            "model": resolve(args.model), "train": str(train), "out": str(work / "trl"),
            "beta": args.beta, "lr": args.learning_rate, "batch": args.batch_size,
            "steps": args.steps, "r": args.rank, "precision": trl_precision(args),
            "max_length": args.max_length, "seed": args.seed,
        }  # fmt: skip
        trl = child(args.trl_python, TRL_DPO, spec, args.timeout)
        trl["pairs_per_second"] = args.steps * args.batch_size / trl["train_seconds"]
        trl["final"] = adapter_figures(
            "dpo",
            spec["model"],
            work / "trl" / "adapter",
            config,
            held,
        )
        report["trl"] = trl
        report["throughput_ratio"] = report["ours"]["pairs_per_second"] / trl["pairs_per_second"]
        report["rss_ratio"] = report["ours"]["peak_rss_mb"] / trl["peak_rss_mb"]
    return report


def bench_rft(args, work: Path) -> dict:
    train = write_jsonl(work / "train.jsonl", additions(args.examples, 0))
    held = write_jsonl(work / "validation.jsonl", additions(args.held_out, 1))
    config = lora_job(
        args, "rft", train, held, work / "ours",
        grader=GRADER, k=args.k, max_tokens=args.max_tokens, beta=args.beta,
    )  # fmt: skip
    report: dict[str, Any] = {"ours": ours({"config": config}, args.timeout)}
    completions = args.steps * args.batch_size * args.k
    report["ours"]["completions_per_second"] = completions / report["ours"]["train_seconds"]
    if args.trl_python:
        spec = {
            "model": resolve(args.model), "train": str(train), "out": str(work / "trl"),
            "beta": args.beta, "lr": args.learning_rate, "batch": args.batch_size, "k": args.k,
            "max_tokens": args.max_tokens, "steps": args.steps, "r": args.rank,
            "precision": trl_precision(args), "seed": args.seed,
        }  # fmt: skip
        trl = child(args.trl_python, TRL_GRPO, spec, args.timeout)
        trl["completions_per_second"] = completions / trl["train_seconds"]
        trl["final"] = adapter_figures(
            "rft",
            spec["model"],
            work / "trl" / "adapter",
            config,
            held,
        )
        report["trl"] = trl
        report["throughput_ratio"] = (
            report["ours"]["completions_per_second"] / trl["completions_per_second"]
        )
    return report


def bench_distill(args, work: Path) -> dict:
    """Teacher and half-depth student on the quickstart's chat data, both graded; then both
    exported and timed through ``tunewright export`` and ``tunewright edge bench``."""
    from tunewright.quickstart import write_dataset

    data = write_dataset(work / "data")
    lines = data.read_text(encoding="utf-8").splitlines()[: args.examples]
    data.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    teacher = args.teacher or args.model
    config = {
        "model": args.model,
        "task": "distill",
        "method": "full",
        "data": {"train": str(data), "validation": 0.1, "max_length": args.max_length},
        "training": {
            "max_steps": args.steps,
            "batch_size": args.batch_size,
            "learning_rate": args.learning_rate,
            "precision": args.precision if args.precision != "default" else "auto",
            "num_threads": args.threads,
        },
        "distill": {"teacher": teacher, "student_layers": args.student_layers, "hard_weight": 0.5},
        "output": str(work / "student"),
        "seed": args.seed,
    }
    report: dict[str, Any] = {"student": ours({"config": config}, args.timeout)}
    commands = []
    for name, run in (("student", work / "student"), ("teacher", Path(teacher))):
        if not (run / "config.yaml").is_file():
            continue  # a teacher that is no run: grade and export it as a run first
        bundle = work / f"{name}-bundle"
        commands.append(
            ["tunewright", "export", str(run), "--out", str(bundle), "--quantize", "int8"]
        )
        commands.append(["tunewright", "edge", "bench", str(bundle)])
        if args.grader:
            commands.append(
                ["tunewright", "eval", str(bundle), "--data", str(args.held_data or data),
                 "--grader", args.grader, "--json"]
            )  # fmt: skip
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
        report.setdefault("commands", []).append(
            {"command": " ".join(command), "rc": done.returncode, "stdout": done.stdout[-4000:]}
        )
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("objective", choices=["dpo", "rft", "distill"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--trl-python", help="the python of an environment with TRL installed")
    parser.add_argument("--teacher", help="distill: the teacher run (default: the base model)")
    parser.add_argument("--grader", help="distill: a grader YAML for the held-out prompts")
    parser.add_argument("--held-data", help="distill: held-out prompts to grade")
    parser.add_argument("--student-layers", type=int, default=15)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--examples", type=int, default=400, help="distill: first N conversations")
    parser.add_argument("--held-out", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        choices=["default", "fp32", "bf16"],
        default="default",
        help="default: each side's own (tunewright's auto: bf16 where the CPU has bf16 "
        "instructions; TRL's configs: bf16 unless fp16 is set); fp32 or bf16: both sides",
    )
    parser.add_argument("--timeout", type=float, default=6 * 3600)
    parser.add_argument("--quick", action="store_true", help="a smoke run: few steps and examples")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.examples, args.held_out, args.learning_rate = 4, 32, 8, 5e-3
        args.max_tokens, args.student_layers = 4, 1
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"objectives-{args.objective}-"))
    bench = {"dpo": bench_dpo, "rft": bench_rft, "distill": bench_distill}[args.objective]
    report = {"objective": args.objective, "settings": {k: str(v) for k, v in vars(args).items()}}
    report.update(bench(args, work))
    text = json.dumps(report, indent=2, default=str)
    if args.json:
        args.json.write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
