"""engine/training.py: the chat loss, what one optimizer step learns from, and torchrun.

A step's gradient is that of the loss summed over every trained token of the step divided by
their number, whether the step's examples come as one batch, as accumulated micro-batches, as a
micro-batch run in pieces, or spread over two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from samples import FRUITS, write_jsonl

from tunewright import get_plugin_manager, prepare_run, train
from tunewright.config import load_config
from tunewright.training import batch_order, feature_length, forward_budget, split_to_budget

pytestmark = pytest.mark.usefixtures("one_thread")


def uneven_chat_rows(n: int) -> list[dict]:
    """Replies of very different lengths, so micro-batches hold very different numbers of trained
    tokens (a mean of per-micro-batch means would weigh them wrongly)."""
    rows = []
    for i, fruit in enumerate((sorted(FRUITS) * n)[:n]):
        reply = f"A {fruit} is {FRUITS[fruit]}." + (
            " It grows on trees and tastes sweet." * 4 if i % 3 == 0 else ""
        )
        rows.append(
            {
                "messages": [
                    {"role": "user", "content": f"Colour of {fruit}? (#{i})"},
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return rows


def config(model_dir: Path, data: Path, out: Path, **training) -> dict:
    return {
        "model": str(model_dir),
        "task": "chat",
        "method": "lora",
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": str(data), "validation": 0.1, "max_length": 128},
        "training": {
            "max_steps": 1,
            "batch_size": 8,
            "learning_rate": 1e-3,
            "precision": "fp32",
            "group_by_length": False,
            "max_forward_tokens": None,
            "max_grad_norm": 1e9,
            **training,
        },
        "output": str(out),
        "seed": 3,
    }


def prepared(raw: dict):
    pm = get_plugin_manager()
    return prepare_run(load_config(raw, pm.registries), pm, echo=lambda message: None)


# -- the chat task's loss ---------------------------------------------------------------------


def test_chat_loss_runs_the_head_on_trained_positions_only(tiny_llama_dir):
    from transformers import AutoModelForCausalLM

    pm = get_plugin_manager()
    task = pm.registries.get("tasks", "chat", key="task")
    tokenizer = task.load_tokenizer(tiny_llama_dir)
    features = [task.tokenize(row, tokenizer) for row in uneven_chat_rows(5)]
    batch = task.collate(features, tokenizer)  # (B, T), padded
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    rows = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: rows.append(args[0].shape[:-1])
    )
    summed, count = task.loss(model, batch)
    handle.remove()
    summed.backward()
    ours = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()

    # the same figures from every position's logits
    logits = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
    ).logits  # (B, T, V)
    targets = batch["labels"][:, 1:]  # (B, T-1): position t predicts token t+1
    scored = targets != -100
    expected = torch.nn.functional.cross_entropy(
        logits[:, :-1][scored], targets[scored], reduction="sum"
    )
    expected.backward()
    trained = sum(sum(1 for t in f["labels"][1:] if t != -100) for f in features)
    assert count == trained and rows == [
        torch.Size([trained])
    ]  # (K, C): only the trained positions
    assert trained < 0.6 * batch["input_ids"].numel()
    assert summed.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(
        ours, model.model.layers[0].mlp.up_proj.weight.grad, rtol=1e-4, atol=1e-7
    )


# -- one step, however its examples come -------------------------------------------------------


def first_step_gradient(raw: dict) -> dict[str, torch.Tensor]:
    """The gradients the optimizer is handed at the first step of ``train``."""
    run = prepared(raw)
    seen = {}

    def capture(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                seen[id(p)] = p.grad.detach().clone()

    names = {id(p): n for n, p in run.model.named_parameters() if p.requires_grad}
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    handle = register_optimizer_step_pre_hook(capture)
    try:
        train(run, save_checkpoints=False, evaluate=False)
    finally:
        handle.remove()
    return {names[k]: v for k, v in seen.items()}


def test_accumulated_or_split_micro_batches_take_the_step_of_one_batch(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", uneven_chat_rows(60))
    raw = config(tiny_llama_dir, data, tmp_path / "run")

    # by hand: the gradient of (summed loss over the first 8 examples' trained tokens) / their number
    run = prepared({**raw, "output": str(tmp_path / "by-hand")})
    features = run.train_features
    first = batch_order(features, 8, 3, 0, False, lambda f: len(f["input_ids"]))[0]
    summed, count = run.task.loss(
        run.model, run.task.collate([features[i] for i in first], run.tokenizer)
    )
    (summed / count).backward()
    expected = {n: p.grad.clone() for n, p in run.model.named_parameters() if p.requires_grad}

    one_batch = first_step_gradient(raw)
    accumulated = first_step_gradient(
        {
            **raw,
            "output": str(tmp_path / "acc"),
            "training": {**raw["training"], "batch_size": 4, "gradient_accumulation_steps": 2},
        }
    )
    pieces = first_step_gradient(
        {
            **raw,
            "output": str(tmp_path / "pieces"),
            "training": {**raw["training"], "max_forward_tokens": 1},
        }
    )  # every example a forward pass of its own
    recomputed = first_step_gradient(
        {
            **raw,
            "output": str(tmp_path / "recomputed"),
            "training": {**raw["training"], "gradient_checkpointing": True},
        }
    )
    assert set(one_batch) == set(expected)
    for name, grad in expected.items():
        if not grad.abs().sum():
            continue  # LoRA's A has no gradient while B is zero
        for got in (one_batch, accumulated, pieces, recomputed):
            torch.testing.assert_close(got[name], grad, rtol=1e-4, atol=1e-8)


def saved_bytes(run) -> int:
    """Bytes autograd keeps for backward in one training forward of the first 8 examples, the
    logits aside (the head is outside the blocks, and a tiny model's are most of it)."""
    storages = {}
    vocabulary = run.model.get_output_embeddings().weight.shape[0]

    def keep(tensor):
        if tensor.shape[-1:] != (vocabulary,):
            storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    run.model.train()
    batch = run.task.collate(run.train_features[:8], run.tokenizer)
    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        run.task.loss(run.model, batch)
    return sum(storages.values())


def test_gradient_checkpointing_keeps_a_fraction_of_the_activations(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", uneven_chat_rows(60))
    raw = config(tiny_llama_dir, data, tmp_path / "kept")
    kept = saved_bytes(prepared(raw))
    recomputed = saved_bytes(
        prepared(
            {
                **raw,
                "output": str(tmp_path / "recomputed"),
                "training": {**raw["training"], "gradient_checkpointing": True},
            }
        )
    )
    assert recomputed < 0.5 * kept, (recomputed, kept)


def test_gradient_checkpointing_is_refused_for_a_model_without_it():
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    from tunewright import ConfigError
    from tunewright.precision import enable_gradient_checkpointing

    model = MobileNetV2ForImageClassification(
        MobileNetV2Config(depth_multiplier=0.35, image_size=32)
    )
    with pytest.raises(
        ConfigError,
        match=r"training\.gradient_checkpointing: MobileNetV2ForImageClassification "
        r"does not support",
    ):
        enable_gradient_checkpointing(model)


def test_split_to_budget_keeps_order_and_bounds_padded_size():
    lengths = [50, 40, 300, 10, 10, 10, 10, 45]
    pieces = split_to_budget(list(range(8)), lengths.__getitem__, 120)
    assert [i for piece in pieces for i in piece] == list(range(8))
    for piece in pieces:
        assert len(piece) * max(lengths[i] for i in piece) <= 120 or len(piece) == 1
    assert [2] in pieces  # longer than the budget: alone
    assert split_to_budget([0, 1, 2], lengths.__getitem__, None) == [[0, 1, 2]]


def test_auto_budget_splits_only_unusually_large_micro_batches():
    lengths = [50] * 70 + [300] * 2
    batches = [list(range(i, i + 8)) for i in range(0, 64, 8)] + [[70, 71, 64, 65, 66, 67, 68, 69]]
    budget = forward_budget("auto", batches, lengths.__getitem__)
    assert budget == 2 * 8 * 50
    assert all(len(split_to_budget(b, lengths.__getitem__, budget)) == 1 for b in batches[:-1])
    assert len(split_to_budget(batches[-1], lengths.__getitem__, budget)) > 1
    assert forward_budget(512, batches, lengths.__getitem__) == 512
    assert forward_budget(None, batches, lengths.__getitem__) is None
    # a task's auto_forward_batches: half a median micro-batch splits a typical one in two
    half = forward_budget("auto", batches, lengths.__getitem__, 0.5)
    assert half == 8 * 50 // 2
    assert all(len(split_to_budget(b, lengths.__getitem__, half)) == 2 for b in batches[:-1])


def preference_rows(n: int) -> list[dict]:
    """Pairs whose sides differ in length, and pairs of very different lengths."""
    rows = []
    for i, fruit in enumerate((sorted(FRUITS) * n)[:n]):
        long = " It grows on trees and tastes sweet." * (3 if i % 3 == 0 else 0)
        rows.append(
            {
                "input": {"messages": [{"role": "user", "content": f"Colour of {fruit}? (#{i})"}]},
                "preferred_output": [
                    {"role": "assistant", "content": f"A {fruit} is {FRUITS[fruit]}.{long}"}
                ],
                "non_preferred_output": [{"role": "assistant", "content": "No idea."}],
            }
        )
    return rows


def test_a_preference_pair_is_grouped_and_split_by_its_longer_side(tiny_llama_dir, tmp_path):
    """A dpo feature has no ``input_ids``: the engine measures it with the task's ``num_tokens``
    (its longer side). Counted as 1, pairs were never grouped by length and a micro-batch never
    ran in pieces, whatever ``max_forward_tokens`` said."""
    data = write_jsonl(tmp_path / "prefs.jsonl", preference_rows(24))
    raw = {
        **config(tiny_llama_dir, data, tmp_path / "whole", max_steps=2),
        "task": "dpo",
        "dpo": {"beta": 0.5},
    }
    whole = prepared(raw)
    length = feature_length(whole.task)
    features = whole.train_features
    assert [length(f) for f in features] == [
        max(len(f["chosen_ids"]), len(f["rejected_ids"])) for f in features
    ]
    assert len({length(f) for f in features}) > 1
    grouped = batch_order(features, 8, 3, 0, True, length)
    assert grouped != batch_order(features, 8, 3, 0, False, length)

    # a budget of two short pairs: each micro-batch runs in pieces, and the step is the same
    rows_seen: list[int] = []
    pieces = prepared(
        {
            **raw,
            "output": str(tmp_path / "pieces"),
            "training": {
                **raw["training"],
                "max_forward_tokens": 2 * min(length(f) for f in features),
            },
        }
    )
    pieces.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(int(kwargs["input_ids"].shape[0])),
        with_kwargs=True,
    )
    one, split = train(whole), train(pieces)
    assert max(rows_seen) < 2 * 8  # never the micro-batch's 8 pairs (16 rows) at once
    # the default, auto, runs a dpo micro-batch in pieces too (the task's auto_forward_batches)
    rows_seen.clear()
    default = prepared(
        {
            **raw,
            "output": str(tmp_path / "default"),
            "training": {k: v for k, v in raw["training"].items() if k != "max_forward_tokens"},
        }
    )
    assert default.config.training.max_forward_tokens == "auto"
    default.model.register_forward_pre_hook(
        lambda module, args, kwargs: rows_seen.append(int(kwargs["input_ids"].shape[0])),
        with_kwargs=True,
    )
    assert train(default).metrics["train_loss"] == pytest.approx(
        one.metrics["train_loss"], rel=1e-5
    )
    assert rows_seen and max(rows_seen) < 2 * 8
    assert split.metrics["train_loss"] == pytest.approx(one.metrics["train_loss"], rel=1e-5)
    a, b = (dict(r.model.named_parameters()) for r in (whole, pieces))
    for name, parameter in a.items():
        if parameter.requires_grad:
            torch.testing.assert_close(parameter, b[name], rtol=1e-4, atol=1e-6)


def test_resumed_run_with_pieces_and_accumulation_matches_one_run(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", uneven_chat_rows(60))
    raw = config(
        tiny_llama_dir,
        data,
        tmp_path / "whole",
        max_steps=4,
        batch_size=4,
        save_steps=2,
        gradient_accumulation_steps=2,
        max_forward_tokens="auto",
        group_by_length=True,
    )
    whole = train(prepared(raw))
    halves = prepared({**raw, "output": str(tmp_path / "halves")})
    first = train(halves, stop_at_step=2)
    rest = train(halves, resume_from=first.checkpoint)
    assert first.global_step == 2 and rest.global_step == whole.global_step == 4
    state = lambda out: json.loads(
        (out / "checkpoints" / "checkpoint-4" / "state.json").read_text()
    )
    assert len(state(tmp_path / "whole")["losses"]) == 4
    assert state(tmp_path / "halves")["losses"] == pytest.approx(
        state(tmp_path / "whole")["losses"], rel=1e-6
    )


# -- torchrun ----------------------------------------------------------------------------------


def free_port() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def launch(
    command: list[str], cwd: Path, env: dict | None = None, timeout: int = 420
) -> subprocess.CompletedProcess:
    """Run a launcher in a session of its own; kill the launcher and every worker when it ends or
    runs past ``timeout``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # nothing of the job outlives the test
        except ProcessLookupError:
            pass
        if process.returncode is None:
            process.communicate(timeout=30)  # killed above: only its pipes are left to drain
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def launcher(kind: str) -> list[str]:
    """Two CPU processes (gloo) on this machine, as a user starts them."""
    if kind == "torchrun":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            free_port(),
        ]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        free_port(),
    ]


#: imported by every Python process of a launched job (its folder is on PYTHONPATH): each
#: process records the examples the training loop collates, one line per micro-batch piece
SPY = """
import json, os, sys
from pathlib import Path

from tunewright.plugins.tasks.chat import ChatTask

_collate = ChatTask.collate


def collate(self, features, tokenizer):
    callers = {sys._getframe(1).f_code.co_name, sys._getframe(2).f_code.co_name}  # a comprehension's frame too
    if "micro_batches" in callers:  # training, not evaluation
        with (Path(os.environ["TW_SPY"]) / f"rank-{os.environ.get('RANK', '0')}.jsonl").open("a") as out:
            out.write(json.dumps([f["input_ids"] for f in features]) + "\\n")
    return _collate(self, features, tokenizer)


ChatTask.collate = collate
"""


def collated(folder: Path) -> dict[str, list[tuple[int, ...]]]:
    """Each rank's training examples, as token ids, in the order it collated them."""
    return {
        path.stem: [
            tuple(ids) for line in path.read_text().splitlines() for ids in json.loads(line)
        ]
        for path in sorted(folder.glob("rank-*.jsonl"))
    }


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["torchrun", "accelerate"])
def test_two_processes_train_as_one_with_the_same_global_batch(kind, tiny_llama_dir, tmp_path):
    # 25 training examples: micro-batches of 8, 8, 8 and 1, so at step 4 one process has no
    # example of its own and must still take part in the step
    data = write_jsonl(tmp_path / "chat.jsonl", uneven_chat_rows(28))
    raw = config(
        tiny_llama_dir,
        data,
        tmp_path / "two",
        max_steps=4,
        batch_size=4,
        logging_steps=1,
        eval_steps=2,
        learning_rate=5e-3,
        max_forward_tokens="auto",
        group_by_length=True,
    )
    raw["training"]["max_grad_norm"] = 1.0
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "one.yaml").write_text(
        yaml.safe_dump(
            {
                **raw,
                "output": str(tmp_path / "one"),
                "training": {**raw["training"], "batch_size": 8},
            }
        )
    )

    spy = tmp_path / "spy"
    (spy / "seen").mkdir(parents=True)
    (spy / "sitecustomize.py").write_text(SPY)
    two = launch(
        [*launcher(kind), "-m", "tunewright", "train", str(tmp_path / "two.yaml")],
        tmp_path,
        env={
            "PYTHONPATH": os.pathsep.join([str(spy), os.environ.get("PYTHONPATH", "")]),
            "TW_SPY": str(spy / "seen"),
        },
    )
    assert two.returncode == 0, two.stderr[-4000:]
    # each process trained on its own share: the 25 examples once between them, at most 4 (half
    # a global micro-batch of 8) at a time, and nothing twice but the copy weighed 0 that the
    # process without an example of its own at step 4 takes part with
    seen = collated(spy / "seen")
    assert set(seen) == {"rank-0", "rank-1"}
    first, second = set(seen["rank-0"]), set(seen["rank-1"])
    assert len(first | second) == 25 and len(first & second) == 1
    assert len(seen["rank-0"]) == len(seen["rank-1"]) == 13  # 4 + 4 + 4 + 1 each
    one = launch(
        [sys.executable, "-m", "tunewright", "train", str(tmp_path / "one.yaml")], tmp_path
    )
    assert one.returncode == 0, one.stderr[-4000:]

    # one run directory, written once: every line of metrics.jsonl once, each evaluation once
    rows = {
        name: [
            json.loads(line)
            for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()
        ]
        for name in ("one", "two")
    }
    assert (
        [r["step"] for r in rows["two"]]
        == [r["step"] for r in rows["one"]]
        == [0, 1, 2, 2, 3, 4, 4]
    )
    assert [r.get("eval_stage") for r in rows["two"] if "eval_stage" in r] == [
        "baseline",
        "training",
        "final",
    ]
    for ours, theirs in zip(rows["two"], rows["one"]):
        for key in ("loss", "eval_loss", "eval_mean_token_accuracy"):
            if key in theirs:
                assert ours[key] == pytest.approx(theirs[key], rel=1e-4), (key, ours["step"])
    assert len((tmp_path / "two" / "data" / "train.jsonl").read_text().splitlines()) == 25
    results = {
        name: json.loads((tmp_path / name / "eval.json").read_text()) for name in ("one", "two")
    }
    assert results["two"]["train"]["tokens"] == results["one"]["train"]["tokens"]
    assert results["two"]["final"]["loss"] < results["two"]["baseline"]["loss"] - 0.1
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(
        p.name for p in (tmp_path / "one").iterdir()
    )
    assert not list((tmp_path / "two").glob("**/.tmp-*")) and not list(
        (tmp_path / "two").glob("**/.staging-*")
    )

    # progress printed once, by the main process
    for line in ("baseline: loss", "step 4/4", "tuned:", "run written to"):
        assert two.stderr.count(line) == 1, (line, two.stderr[-3000:])


CONVERT_ONCE = '''
import os, sys, time
from pathlib import Path
import tunewright
from tunewright import atomic_directory, cache_dir, hookimpl
from tunewright.config import load_config
import shutil, yaml

class Packaged:
    """A model that must be converted into the cache on first use, as SmolLM2's GGUF is."""
    description = "a test model converted on first use"

    def resolve(self):
        target = cache_dir() / "models" / "converted-once"
        if (target / "config.json").is_file():
            return target
        with open(os.environ["CONVERSIONS"], "a") as log:
            log.write(os.environ["RANK"] + "\\n")
        with atomic_directory(target) as staging:
            time.sleep(2)  # a slow conversion: another process starting now would convert too
            shutil.copytree(os.environ["SOURCE"], staging, dirs_exist_ok=True)
        return target

class Plugin:
    @hookimpl
    def register_models(self, register):
        register("packaged-test", Packaged())

pm = tunewright.get_plugin_manager(plugins=[("packaged", Plugin())])
raw = yaml.safe_load(Path(sys.argv[1]).read_text())
run = tunewright.prepare_run(load_config(raw, pm.registries), pm)
# one file per rank: two ranks printing to the launcher's shared stdout can interleave
Path(os.environ["RESOLVED"], os.environ["RANK"]).write_text(str(run.model is not None))
'''


@pytest.mark.slow
def test_a_packaged_model_is_converted_once_under_torchrun(tiny_llama_dir, tmp_path):
    data = write_jsonl(tmp_path / "chat.jsonl", uneven_chat_rows(20))
    raw = config(tiny_llama_dir, data, tmp_path / "run")
    raw["model"] = "packaged-test"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    (tmp_path / "convert.py").write_text(CONVERT_ONCE)
    cache = tmp_path / "cache"
    resolved = tmp_path / "resolved"
    resolved.mkdir()
    done = launch(
        [*launcher("torchrun"), str(tmp_path / "convert.py"), str(tmp_path / "job.yaml")],
        tmp_path,
        env={
            "CONVERSIONS": str(tmp_path / "conversions.log"),
            "SOURCE": str(tiny_llama_dir),
            "TUNEWRIGHT_CACHE": str(cache),
            "RESOLVED": str(resolved),
        },
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "conversions.log").read_text().split() == ["0"]
    assert {rank.name: rank.read_text() for rank in resolved.iterdir()} == {
        "0": "True",
        "1": "True",
    }
    assert (cache / "models" / "converted-once" / "config.json").is_file()
