"""bench/train_bench.py: the shared data, the plain side's labels, the referee, a whole tiny run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "train_bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("train_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CONVERSATIONS = [
    [
        {"role": "user", "content": "What is AI?"},
        {"role": "assistant", "content": "The study of machines that think."},
    ],
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How are you?"},
        {"role": "assistant", "content": "Fine, thanks."},
    ],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ],
]


def test_plain_labels_match_the_chat_task(bench, tiny_llama_dir):
    """The plain script masks exactly what tunewright's chat task masks, token for token."""
    from transformers import AutoTokenizer

    from tunewright import get_plugin_manager

    task = get_plugin_manager().registries.get("tasks", "chat", key="task")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    for messages in CONVERSATIONS:
        ours = bench.tokenize_assistant_only(messages, tokenizer)
        theirs = task.tokenize({"messages": messages}, tokenizer, 512)
        assert ours["input_ids"] == theirs["input_ids"]
        assert ours["labels"] == theirs["labels"]
        trained = tokenizer.decode([t for t in ours["labels"] if t != bench.IGNORE])
        assert "user" not in trained and messages[-1]["content"] in trained


def test_split_is_seeded_disjoint_and_drops_long_examples(bench, tiny_llama_dir, tmp_path):
    first = bench.prepare_data(
        tmp_path / "a", str(tiny_llama_dir), seed=3, validation_fraction=0.1, max_length=64
    )
    again = bench.prepare_data(
        tmp_path / "b", str(tiny_llama_dir), seed=3, validation_fraction=0.1, max_length=64
    )
    other = bench.prepare_data(
        tmp_path / "c", str(tiny_llama_dir), seed=4, validation_fraction=0.1, max_length=64
    )
    read = lambda data, name: Path(data[name]).read_text()
    assert read(first, "validation") == read(again, "validation")
    assert read(first, "validation") != read(other, "validation")
    train = {json.dumps(r) for r in bench.read_jsonl(first["train"])}
    validation = {json.dumps(r) for r in bench.read_jsonl(first["validation"])}
    assert train and validation and not train & validation
    assert first["dropped_longer_than_max_length"] > 0
    assert (
        first["train_examples"]
        + first["validation_examples"]
        + first["dropped_longer_than_max_length"]
        == first["examples"]
    )


def test_referee_loss_equals_the_chat_task_loss(bench, tiny_llama_dir):
    """The bench's own held-out loss is the same number the chat task reports, in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunewright import get_plugin_manager

    task = get_plugin_manager().registries.get("tasks", "chat", key="task")
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir, dtype=torch.float32)
    features = [bench.tokenize_assistant_only(m, tokenizer) for m in CONVERSATIONS]
    ours = bench.heldout_metrics(model, features, tokenizer.pad_token_id, batch_size=2)
    theirs = task.metrics(
        model, [task.collate(features[i : i + 2], tokenizer) for i in range(0, len(features), 2)]
    )
    assert ours["tokens"] == sum(
        sum(1 for t in f["labels"][1:] if t != bench.IGNORE) for f in features
    )
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ours["mean_token_accuracy"] == pytest.approx(theirs["mean_token_accuracy"], rel=1e-6)


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_packed_rows_give_each_example_its_unpacked_loss(bench, tiny_llama_dir, attention):
    """The bench's packing lever is measured on a packing that keeps examples apart."""
    import torch
    from transformers import AutoModelForCausalLM

    from tunewright import get_plugin_manager

    task = get_plugin_manager().registries.get("tasks", "chat", key="task")
    tokenizer = task.load_tokenizer(tiny_llama_dir)
    batch = task.collate(
        [task.tokenize({"messages": m}, tokenizer) for m in CONVERSATIONS], tokenizer
    )
    model = AutoModelForCausalLM.from_pretrained(
        tiny_llama_dir, dtype=torch.float32, attn_implementation=attention
    )
    unpacked = bench.per_example_losses(model, batch, packed=False)
    assert bench.per_example_losses(model, batch, packed=True) == pytest.approx(unpacked, rel=1e-5)
    # positions that run on from one example into the next let each see the ones before it
    leaky = bench.pack(batch)
    leaky["position_ids"] = torch.arange(leaky["input_ids"].shape[1])[None]
    losses, example = bench.packed_token_losses(model, leaky)
    with torch.no_grad():
        seen = torch.zeros(len(CONVERSATIONS)).index_add_(0, example, losses).tolist()
    assert seen[0] == pytest.approx(unpacked[0], rel=1e-5)
    assert (
        max(abs(a - b) / abs(b) for a, b in zip(seen[1:], unpacked[1:])) > 1e-3
    )  # 100x the tolerance above


@pytest.mark.slow
def test_a_whole_bench_run_on_a_tiny_model(tiny_llama_dir, tmp_path):
    out = tmp_path / "bench.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            str(tiny_llama_dir),
            "--max-steps",
            "2",
            "--max-length",
            "64",
            "--runs",
            "tunewright-auto,tunewright-checkpointing,plain-fp32",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(out.read_text())
    runs = {run["key"]: run for run in report["runs"]}
    assert set(runs) == {"tunewright-auto", "tunewright-checkpointing", "plain-fp32"}
    # the same steps with and without recomputing activations: the same validation loss
    assert report["heldout"]["tunewright-checkpointing"]["loss"] == pytest.approx(
        report["heldout"]["tunewright-auto"]["loss"], rel=1e-4
    )
    assert (
        runs["plain-fp32"]["lora"]["target_modules"]
        == runs["tunewright-auto"]["lora"]["target_modules"]
    )
    for run in runs.values():
        assert run["global_step"] == 2 and run["train_tokens"] > 0 and run["peak_rss_mib"] > 0
    assert (
        report["heldout"]["tunewright-auto"]["tokens"] == report["heldout"]["plain-fp32"]["tokens"]
    )
    for key in ("tunewright-auto", "tunewright-checkpointing"):
        assert set(report["ratios_tunewright_over_plain"][key]["plain-fp32"]) >= {
            "throughput",
            "peak_rss",
            "validation_loss",
        }
        assert set(report["targets"][key]) == {
            "throughput_at_least_3x_plain_bf16",
            "peak_rss_at_most_half_of_plain",
            "validation_loss_no_worse",
        }
        assert (
            report["targets"][key]["throughput_at_least_3x_plain_bf16"] is None
        )  # no plain-bf16 run
        assert f"{key} / plain-fp32" in completed.stdout


@pytest.mark.slow
def test_the_step_profile_measures_every_lever_on_a_tiny_model(tiny_llama_dir, tmp_path):
    out = tmp_path / "steps.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            str(tiny_llama_dir),
            "--max-length",
            "64",
            "--step-profile",
            "--step-profile-batches",
            "1",
            "--step-profile-rounds",
            "1",
            "--threads",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())["step_profile"]
    setups = result["setups"]
    assert set(setups) == {
        "plain-fp32",
        "plain-bf16",
        "tunewright",
        "tw-before",
        "tw-fp32",
        "tw-checkpointing",
        "tw-lora-fp32-copies",
        "tw-peft-lora",
        "tw-upcast-loss",
        "tw-every-position",
        "tw-sdpa",
        "tw-eager",
        "tw-packed-eager",
        "tw-packed-sdpa",
    }
    assert all(row["tokens_per_cpu_second"] > 0 for row in setups.values())
    saved = {name: row["saved_for_backward_mib_longest_batch"] for name, row in setups.items()}
    # a vocabulary of 49,152 and a hidden size of 64: the logits are most of what is kept
    assert saved["tunewright"] < 0.7 * saved["tw-every-position"]
    assert saved["tunewright"] < saved["tw-lora-fp32-copies"]
    assert saved["tw-checkpointing"] < saved["tunewright"]  # the blocks' activations are recomputed
    assert (
        saved["tunewright"] < 0.7 * saved["tw-upcast-loss"]
    )  # no fp32 log-softmax of the scored logits
    assert (
        saved["tunewright"] < saved["tw-eager"]
    )  # no copies of the key-value heads, no fp32 softmax
    assert max(result["packed_vs_unpacked_max_relative_difference"].values()) < 1e-4


@pytest.mark.slow
def test_the_step_profile_runs_the_set_ups_asked_for(tiny_llama_dir, tmp_path):
    out = tmp_path / "steps.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--model",
        str(tiny_llama_dir),
        "--max-length",
        "64",
        "--step-profile",
        "--step-profile-batches",
        "1",
        "--step-profile-rounds",
        "1",
        "--threads",
        "1",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(out),
    ]
    completed = subprocess.run(
        [*command, "--step-profile-setups", "tw-peft-lora"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    setups = json.loads(out.read_text())["step_profile"]["setups"]
    assert set(setups) == {
        "plain-fp32",
        "tunewright",
        "tw-peft-lora",
    }  # the baseline and tunewright always run
    saved = {name: row["saved_for_backward_mib_longest_batch"] for name, row in setups.items()}
    assert saved["tunewright"] <= saved["tw-peft-lora"]
    refused = subprocess.run(
        [*command, "--step-profile-setups", "tw-nothing"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2 and "unknown set-up tw-nothing" in refused.stderr


@pytest.mark.slow
def test_the_matmul_profile_splits_the_step_by_operator_and_product(tiny_llama_dir, tmp_path):
    out = tmp_path / "matmuls.json"
    completed = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--model",
            str(tiny_llama_dir),
            "--max-length",
            "64",
            "--matmul-profile",
            "--step-profile-batches",
            "2",
            "--threads",
            "1",
            "--workdir",
            str(tmp_path / "work"),
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())["matmul_profile"]
    assert result["batches"] == 2 and result["tokens"] > 0
    assert 0 < result["matmul_share"] < 1 and sum(result["op_shares"].values()) <= 1 + 1e-9
    assert result["products"], "no matrix product was profiled"
    # the tied LM head (vocabulary 49,152 x hidden 64) is among the products, on trained positions only
    heads = [row for row in result["products"] if 49_152 in row["shape"][1:]]
    assert heads and all(row["shape"][0] < result["tokens"] for row in heads)
    assert all(row["gflops_in_step"] > 0 and row["gflops_alone"] > 0 for row in result["products"])
