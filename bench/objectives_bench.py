"""DPO and RFT against TRL's DPOTrainer and GRPOTrainer, and distillation for the edge.

    python bench/objectives_bench.py dpo --trl-python /opt/trl-venv/bin/python --json dpo.json
    python bench/objectives_bench.py rft --trl-python /opt/trl-venv/bin/python --json rft.json
    python bench/objectives_bench.py distill --json distill.json
    python bench/objectives_bench.py dpo --quick --model DIR   # also rft, distill: a smoke run

Each side trains in a process of its own (so that its peak RSS is its own), on the same data,
model, LoRA rank, beta, group size and steps; the held-out figures are computed by tunewright's
own code for both sides (reward accuracy from the adapter against the adapter switched off; the
grade with the same ``string_check`` grader), so only the training differs.

- ``dpo``: pairs where the preferred answer is checkably better (the right capital, politely; the
  wrong one, rudely). Issue 20's targets: held-out reward accuracy from ~0.5 to >= 0.8, within 2
  points of TRL's; throughput >= 1.5x TRL's (pairs per second), peak RSS <= 0.7x.
- ``rft``: additions of a two-digit number (10 to 49) and a one-digit one, graded ``string_check``
  ``eq`` the sum (the completion is the number and nothing else: "157" is no right "57"). First an
  SFT stage: a short LoRA ``chat`` run (``--sft-steps``) on answered additions, merged
  (``merge_and_unload``) into a plain model folder, ``<workdir>/sft-model``, which is the
  ``model`` of both sides: "from the SFT model" is one starting point. The 360 sums are split in
  two halves once (``addition_facts``): the SFT stage trains on one, RFT trains and is graded on
  the other, so SFT teaches the form of the answer, not the graded sums. Why this task: with
  single digits the SFT model already answers 85% of the other half right (no room for +15);
  two-digit plus two-digit sums are beyond the 135M model (about 10% right untuned), so most
  sampled groups are all wrong and give GRPO no signal; two digits plus one, the SFT model
  answers about 35% right (40 held-out prompts, 30 SFT steps): room, and groups that disagree.
  Targets: held-out grade +15 points from the SFT model's (``sft_grade``, our eval.json's
  baseline); throughput >= 1.2x TRL's (completions per second).
- ``distill``: a teacher run (``--teacher``; by default the bench trains one: a LoRA ``chat``
  run, ``--sft-steps``, on capitals answered in a fixed sentence) distilled into a student with
  half its layers (15 of SmolLM2's 30; top-k logits of the teacher plus the data's own answers
  as hard labels, ``--hard-weight``) on the same training split. Both runs are exported with
  ``tunewright export --quantize int8``, timed with ``tunewright edge bench`` and graded on the
  held-out prompts with ``tunewright eval BUNDLE --grader`` (``string_check`` ``like`` the
  capital); the report holds the commands' JSON. Targets: the student keeps >= 90% of the
  teacher's grade (``grade_ratio``); its bundle decodes >= 1.8x faster (``speed_ratio``).

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


def addition_facts(part: str) -> list[tuple[int, int]]:
    """Half of the 360 additions ``a + b`` of a two-digit ``a`` (10 to 49) and a one-digit ``b``:
    ``"sft"`` (the SFT stage's) or ``"rft"`` (RFT's training and held-out prompts), a fixed
    shuffle split in two, so that the SFT stage teaches the form of the answer and not the sums
    that are then graded."""
    facts = [(a, b) for a in range(10, 50) for b in range(1, 10)]
    random.Random(20).shuffle(facts)
    return facts[: len(facts) // 2] if part == "sft" else facts[len(facts) // 2 :]


def additions(n: int, seed: int, *, part: str = "rft", answered: bool = False) -> list[dict]:
    """``n`` additions drawn from ``addition_facts(part)``, the prompt and its ``answer`` (the
    sum); ``answered``: with the answer as the assistant's turn too (the SFT stage's data)."""
    rng = random.Random(seed)
    facts = addition_facts(part)
    rows = []
    for _ in range(n):
        a, b = rng.choice(facts)
        messages = [{"role": "user", "content": f"What is {a} + {b}? Answer with the number."}]
        if answered:
            messages.append({"role": "assistant", "content": str(a + b)})
        rows.append({"messages": messages, "answer": str(a + b)})
    return rows


def capitals(n: int, seed: int) -> list[dict]:
    """``n`` capital questions answered in a fixed sentence, with the capital as ``answer``."""
    rng = random.Random(seed)
    countries = sorted(CAPITALS)
    rows = []
    for _ in range(n):
        country = rng.choice(countries)
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"What is the capital of {country}?"},
                    {
                        "role": "assistant",
                        "content": f"The capital of {country} is {CAPITALS[country]}.",
                    },
                ],
                "answer": CAPITALS[country],
            }
        )
    return rows


#: rft: the completion must be the sum and nothing else (``eq``: "157" is not a right "57")
GRADER = {
    "type": "string_check",
    "name": "sum",
    "input": "{{sample.output_text}}",
    "reference": "{{item.answer}}",
    "operation": "eq",
}
#: distill: the answer names the capital
CAPITAL_GRADER = {
    "type": "string_check",
    "name": "capital",
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


def merge_run(spec: dict) -> dict:
    """A LoRA run's adapter merged into its base (PEFT ``merge_and_unload``), saved with the
    run's tokenizer as a plain Hugging Face folder: a ``model:`` for tunewright and TRL alike."""
    from tunewright import load_run

    run = load_run(spec["run"], merged=False)
    model = run.model.merge_and_unload()
    model.save_pretrained(spec["out"])
    run.tokenizer.save_pretrained(spec["out"])
    return {"model": spec["out"], "layers": model.config.num_hidden_layers}


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
    return [1.0 if t.strip() == a else 0.0 for t, a in zip(texts, answer)]  # string_check eq
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
    "import resource; out = b.{function}(json.loads(sys.argv[1])); "
    "out['peak_rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; "
    "print(json.dumps(out))"
)


def ours(spec: dict, timeout: float, function: str = "tunewright_side") -> dict:
    code = OURS.format(here=str(Path(__file__).parent), function=function)
    return child(sys.executable, code, spec, timeout)


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


def training(args, steps: int, learning_rate: float) -> dict:
    return {
        "max_steps": steps,
        "batch_size": args.batch_size,
        "learning_rate": learning_rate,
        "precision": args.precision if args.precision != "default" else "auto",
        "num_threads": args.threads,
    }


def lora_job(args, task: str, train: Path, validation: Path, out: Path, **section) -> dict:
    config = {
        "model": args.model,
        "task": task,
        "method": "lora",
        "lora": {"r": args.rank, "alpha": 2 * args.rank},
        "data": {"train": str(train), "validation": str(validation), "max_length": args.max_length},
        "training": training(args, args.steps, args.learning_rate),
        "output": str(out),
        "seed": args.seed,
        task: section,
    }
    return config


def supervised_run(args, train: Path, validation: Path, out: Path) -> dict:
    """A short LoRA ``chat`` run (``--sft-steps`` at ``--sft-learning-rate``) in a child."""
    config = lora_job(args, "chat", train, validation, out)
    del config["chat"]
    config["training"] = training(args, args.sft_steps, args.sft_learning_rate)
    side = ours({"config": config}, args.timeout)
    return {"run": str(out), "steps": args.sft_steps, **side}


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
    """The SFT stage (a LoRA chat run on answered additions, merged into a plain model folder),
    then RFT from that folder on both sides; the held-out grade before (the SFT model's: our
    eval.json's baseline) and after, both sides graded by the rft task's own code."""
    sft_rows = additions(args.examples + args.held_out, 2, part="sft", answered=True)
    sft_train = write_jsonl(work / "sft-train.jsonl", sft_rows[: args.examples])
    sft_held = write_jsonl(work / "sft-validation.jsonl", sft_rows[args.examples :])
    train = write_jsonl(work / "train.jsonl", additions(args.examples, 0))
    held = write_jsonl(work / "validation.jsonl", additions(args.held_out, 1))
    sft = supervised_run(args, sft_train, sft_held, work / "sft")
    merged = ours({"run": sft["run"], "out": str(work / "sft-model")}, args.timeout, "merge_run")
    sft["model"] = merged["model"]
    config = lora_job(
        args, "rft", train, held, work / "ours",
        grader=GRADER, k=args.k, max_tokens=args.max_tokens, beta=args.beta,
    )  # fmt: skip
    config["model"] = sft["model"]  # both sides start from the SFT model
    report: dict[str, Any] = {"sft": sft, "ours": ours({"config": config}, args.timeout)}
    completions = args.steps * args.batch_size * args.k
    mine = report["ours"]
    mine["completions_per_second"] = completions / mine["train_seconds"]
    sft_grade = mine["baseline"]["grade"]
    report["sft_grade"] = sft_grade
    report["ours_grade"] = mine["final"]["grade"]
    report["ours_rise_points"] = 100 * (mine["final"]["grade"] - sft_grade)
    if args.trl_python:
        spec = {
            "model": sft["model"], "train": str(train), "out": str(work / "trl"),
            "beta": args.beta, "lr": args.learning_rate, "batch": args.batch_size, "k": args.k,
            "max_tokens": args.max_tokens, "steps": args.steps, "r": args.rank,
            "precision": trl_precision(args), "seed": args.seed,
        }  # fmt: skip
        trl = child(args.trl_python, TRL_GRPO, spec, args.timeout)
        trl["completions_per_second"] = completions / trl["train_seconds"]
        trl["final"] = adapter_figures("rft", sft["model"], work / "trl" / "adapter", config, held)
        report["trl"] = trl
        report["trl_grade"] = trl["final"]["grade"]
        report["trl_rise_points"] = 100 * (trl["final"]["grade"] - sft_grade)
        report["throughput_ratio"] = mine["completions_per_second"] / trl["completions_per_second"]
    return report


def layers_of(model: str) -> int:
    """The decoder layers of a model (registered name or folder) or of a run's base model."""
    if (Path(model) / "config.yaml").is_file():
        import yaml

        model = yaml.safe_load((Path(model) / "config.yaml").read_text())["model"]
    config = json.loads((Path(resolve(model)) / "config.json").read_text())
    return int(config["num_hidden_layers"])


def tunewright_json(command: list[str], timeout: float) -> dict:
    """Run a ``tunewright`` command that prints JSON on stdout; its result, or its failure."""
    done = subprocess.run(["tunewright", *command], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        return {"command": " ".join(command), "rc": done.returncode, "error": done.stderr[-2000:]}
    return json.loads(done.stdout)


def bundle_figures(args, name: str, run: Path, held: Path, grader: Path, work: Path) -> dict:
    """Export ``run`` to an int8 bundle, time it (``edge bench``) and grade its answers to the
    held-out prompts (``eval --grader``), each through tunewright's own command."""
    bundle = work / f"{name}-bundle"
    exported = tunewright_json(
        ["export", str(run), "--out", str(bundle), "--quantize", "int8", "--json"], args.timeout
    )
    if "error" in exported:
        return {"export": exported}
    timing = ["edge", "bench", str(bundle), "--new-tokens", str(args.bench_tokens)]
    if args.threads:
        timing += ["--threads", str(args.threads)]
    timed = tunewright_json(timing, args.timeout)
    graded = tunewright_json(
        ["eval", str(bundle), "--data", str(held), "--grader", str(grader),
         "--max-new-tokens", str(args.max_tokens), "--json"],
        args.timeout,
    )  # fmt: skip
    return {
        "bundle": str(bundle),
        "quantization": exported["quantization"].get("name"),
        "parity": exported["parity"],
        "size_mb": timed.get("size_mb"),
        "tokens_per_second": timed.get("tokens_per_second"),
        "first_token_ms": timed.get("first_token_ms"),
        "grade": graded["tuned"]["mean"] if "tuned" in graded else None,
        "bench": timed,
        "graded": graded,
    }


def bench_distill(args, work: Path) -> dict:
    """A teacher run (``--teacher``, or a LoRA chat run the bench trains on capitals answered in a
    fixed sentence), distilled into a student with half its layers on the same training split;
    both exported to int8 bundles, timed with ``edge bench`` and graded on held-out prompts."""
    train = write_jsonl(work / "train.jsonl", capitals(args.examples, 0))
    held = write_jsonl(work / "validation.jsonl", capitals(args.held_out, 1))
    grader = work / "grader.yaml"
    grader.write_text(json.dumps(CAPITAL_GRADER))  # JSON is YAML
    report: dict[str, Any] = {}
    if args.teacher:
        teacher = Path(args.teacher)
    else:
        teacher = work / "teacher"
        report["teacher_run"] = supervised_run(args, train, held, teacher)
    student_layers = args.student_layers or layers_of(str(teacher)) // 2
    config = {
        "model": args.model,
        "task": "distill",
        "method": "full",
        "data": {"train": str(train), "validation": str(held), "max_length": args.max_length},
        "training": training(args, args.steps, args.learning_rate),
        "distill": {
            "teacher": str(teacher),
            "student_layers": student_layers,
            "hard_weight": args.hard_weight,
        },
        "output": str(work / "student"),
        "seed": args.seed,
    }
    report["student_run"] = ours({"config": config}, args.timeout)
    report["student_run"]["layers"] = student_layers
    report["teacher_layers"] = layers_of(str(teacher))
    for name, run in (("teacher", teacher), ("student", work / "student")):
        report[name] = bundle_figures(args, name, run, held, grader, work)
    t, s = report["teacher"], report["student"]
    if t.get("grade") is not None and s.get("grade") is not None:
        report["teacher_grade"], report["student_grade"] = t["grade"], s["grade"]
        report["grade_ratio"] = s["grade"] / t["grade"] if t["grade"] else None
    if t.get("tokens_per_second") and s.get("tokens_per_second"):
        report["teacher_tokens_per_second"] = t["tokens_per_second"]
        report["student_tokens_per_second"] = s["tokens_per_second"]
        report["speed_ratio"] = s["tokens_per_second"] / t["tokens_per_second"]
        report["teacher_size_mb"], report["student_size_mb"] = t["size_mb"], s["size_mb"]
    return report


#: each objective's defaults where they differ. rft: 60 steps of 8 prompts x 4 completions
#: (1,920 completions); 4 steps took 6.6 s a step on our side and 10.4 s on TRL's (2 cores,
#: lightly loaded), so about 7 and 10.5 minutes of training. distill: the teacher's 30 steps
#: took 0.7 s each and the 15-layer student's full fine-tuning 1.5 s, so 300 student steps
#: (2,400 examples, enough for a cut-down model to relearn the sentence and its 16 capitals)
#: are about 7.5 minutes, plus about 45 s per bundle to export, time and grade.
#: rft's learning rate: at 2e-4 the 60 steps raised the held-out grade by 6 points (TRL's by 2);
#: at 1e-3 by 25 (2026-12-05, bench/README.md)
DEFAULTS: dict[str, dict[str, Any]] = {
    "dpo": dict(steps=100, examples=400, held_out=100, learning_rate=5e-5, max_tokens=16),
    "rft": dict(steps=60, examples=400, held_out=100, learning_rate=1e-3, max_tokens=8),
    "distill": dict(steps=300, examples=400, held_out=100, learning_rate=1e-4, max_tokens=16),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("objective", choices=["dpo", "rft", "distill"])
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--trl-python", help="the python of an environment with TRL installed")
    parser.add_argument(
        "--teacher", help="distill: a teacher run (default: the bench trains one on its data)"
    )
    parser.add_argument(
        "--student-layers", type=int, help="distill: default half the teacher's layers"
    )
    parser.add_argument("--hard-weight", type=float, default=0.5, help="distill: hard labels")
    parser.add_argument("--steps", type=int, help="training steps (dpo 100, rft 60, distill 300)")
    parser.add_argument(
        "--sft-steps", type=int, default=30, help="rft: the SFT stage; distill: the teacher"
    )
    parser.add_argument("--sft-learning-rate", type=float, default=1e-3)
    parser.add_argument("--examples", type=int, help="training examples (400)")
    parser.add_argument("--held-out", type=int, help="held-out examples (100)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument(
        "--max-tokens", type=int, help="rft: longest completion (8); distill: answer graded (16)"
    )
    parser.add_argument("--bench-tokens", type=int, default=64, help="distill: edge bench tokens")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, help="dpo 5e-5, rft 1e-3, distill 1e-4")
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
    for key, value in DEFAULTS[args.objective].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.quick:
        args.steps, args.examples, args.held_out, args.learning_rate = 4, 32, 8, 5e-3
        args.sft_steps, args.max_tokens, args.bench_tokens = 4, 4, 8
    work = args.workdir or Path(tempfile.mkdtemp(prefix=f"objectives-{args.objective}-"))
    work.mkdir(parents=True, exist_ok=True)
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
