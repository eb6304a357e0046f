"""The data layer: reading files, checking examples, splitting, balancing, preparing a job."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tunewright import DataError, JobConfig, PluginError, Problem, get_plugin_manager, hookimpl
from tunewright.data import (
    DataProblems,
    PreparedData,
    balance,
    check_examples,
    check_lengths,
    prepare_data,
    read_examples,
    render_report,
    split,
    summarize,
)
from tunewright.plugins.tasks import ChatTask, ClassificationTask

BY_LABEL = ClassificationTask().stratify_key


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


@pytest.fixture(scope="module")
def bert_tokenizer():
    from transformers import AutoTokenizer

    path = get_plugin_manager().registries.models["minilm-l6"].resolve()
    return AutoTokenizer.from_pretrained(path)


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_llama_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_llama_dir)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def chat(question, answer="ok"):
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ]
    }


def labelled(n, labels=("pos", "neg"), prefix="text"):
    return [{"text": f"{prefix} {i}", "label": labels[i % len(labels)]} for i in range(n)]


def config(train, task="classification", training=None, **data):
    return JobConfig.model_validate(
        {
            "model": "minilm-l6",
            "task": task,
            "training": training or {},
            "data": {"train": str(train), **data},
        }
    )


LOCATION = re.compile(r"^.+\.(jsonl|csv|json):\d+$")


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path, pm):
    (tmp_path / "train.jsonl").write_text("{}\n")
    with pytest.raises(
        DataError, match=r"tran\.jsonl: file not found; did you mean .*train\.jsonl"
    ):
        read_examples(tmp_path / "tran.jsonl", pm.registries)
    with pytest.raises(DataError, match=r"file not found \(the folder .* does not exist either\)"):
        read_examples(tmp_path / "nowhere" / "x.jsonl", pm.registries)


def test_directory(tmp_path, pm):
    # A folder format is built in (image-folder, a folder per class), so a folder is read with it.
    with pytest.raises(
        DataError,
        match=r"the folder is empty: it holds no records \(expected a data "
        r"file ending in .*\.csv.*\.jsonl.*, or a folder read by image-folder",
    ):
        read_examples(tmp_path, pm.registries)


def test_a_folder_format_reads_folders(tmp_path):
    class Folders:
        suffixes = ()
        directory = True

        def read(self, path):
            for number, item in enumerate(sorted(path.iterdir()), start=1):
                yield number, {"text": item.read_text(), "label": item.stem.split("-")[0]}

        def to_example(self, record):
            return record

    class Plugin:
        @hookimpl
        def register_dataset_formats(self, register):
            register("folders", Folders())

    pm = get_plugin_manager(plugins=[("folders", Plugin())])
    (tmp_path / "pos-1.txt").write_text("good")
    (tmp_path / "neg-1.txt").write_text("bad")
    examples, locations, problems = read_examples(tmp_path, pm.registries)
    assert examples == [{"text": "bad", "label": "neg"}, {"text": "good", "label": "pos"}]
    assert locations == [f"{tmp_path}:1", f"{tmp_path}:2"] and problems == []
    with pytest.raises(DataError, match="is a file, and data.format 'folders' reads folders"):
        read_examples(tmp_path / "pos-1.txt", pm.registries, format="folders")


@pytest.mark.parametrize("content", [b"", b"\n  \n\n"])
def test_empty_file(tmp_path, pm, content):
    path = tmp_path / "train.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}: the file is empty"):
        read_examples(path, pm.registries)


def test_unknown_suffix(tmp_path, pm):
    path = tmp_path / "train.txt"
    path.write_text("hello\n")
    with pytest.raises(
        DataError, match=r"cannot tell the format of a '\.txt' file .* set data.format"
    ):
        read_examples(path, pm.registries)


def test_utf16_file(tmp_path, pm):
    path = tmp_path / "train.jsonl"
    path.write_text('{"text": "a", "label": 1}\n', encoding="utf-16")
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}:1: the file is UTF-16 .* save it as UTF-8"
    ):
        read_examples(path, pm.registries)


def test_non_utf8_line_is_one_problem(tmp_path, pm):
    path = tmp_path / "train.jsonl"
    path.write_bytes(
        b'{"text": "a", "label": 1}\n{"text": "caf\xe9", "label": 2}\n{"text": "c", "label": 1}\n'
    )
    _examples, locations, problems = read_examples(path, pm.registries)
    assert locations == [f"{path}:1", f"{path}:3"]
    assert problems == [
        Problem(f"{path}:2", "byte 0xe9 at column 14 is not UTF-8 (save the file as UTF-8)")
    ]


def test_every_broken_line_is_reported(tmp_path, pm):
    path = tmp_path / "train.jsonl"
    path.write_text(
        json.dumps(chat("a")) + "\n{broken\n\n" + json.dumps(chat("b")) + "\n[1, 2]\n"
        '{"messages": [{"role": "user", "content": "x"}]\n'
    )
    _examples, locations, problems = read_examples(path, pm.registries)
    assert locations == [f"{path}:1", f"{path}:4"]
    assert [p.location for p in problems] == [f"{path}:2", f"{path}:5", f"{path}:6"]
    assert problems[0].message.startswith("not valid JSON: Expecting property name")
    assert "(each line must be one complete JSON object)" in problems[0].message
    assert problems[1].message == 'expected a JSON object with "messages", got a list'
    assert problems[2].message.startswith("not valid JSON")


def test_no_record_matches_any_format(tmp_path, pm):
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": "q", "answer": "a"}] * 2)
    examples, _, problems = read_examples(path, pm.registries)
    assert examples == [] and len(problems) == 2
    message = problems[0].message
    assert "found: question, answer" in message
    for name in ("chat", "prompt-completion", "instruction", "text-label"):
        assert f"{name}: JSONL" in message


# ---------------------------------------------------------------------------------------------
# Checking examples
# ---------------------------------------------------------------------------------------------


def read(path, pm):
    examples, locations, problems = read_examples(path, pm.registries)
    assert problems == []
    return examples, locations


def test_chat_example_checks_carry_locations(tmp_path, pm):
    records = [chat(f"q{i}") for i in range(60)]
    records[3] = {
        "messages": [{"role": "human", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    }
    records[7] = {
        "messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "yo"}]
    }
    records[11] = {"messages": [{"role": "user", "content": "hi"}]}
    records[12] = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": "b"},
        ]
    }
    path = write_jsonl(tmp_path / "train.jsonl", records)
    problems = check_examples(*read(path, pm), "chat", pm)
    assert [(p.location, p.message.split(" (")[0]) for p in problems] == [
        (f"{path}:4", "message 1: unknown role 'human'"),
        (f"{path}:8", "message 1"),
        (f"{path}:12", "no assistant message"),
        (f"{path}:13", "the last message is from user"),
    ]
    assert "(allowed: system, user, assistant)" in problems[0].message


def test_duplicates_warn_naming_both_lines(tmp_path, pm):
    records = labelled(60)
    records[40] = dict(records[5])
    path = write_jsonl(tmp_path / "train.jsonl", records)
    [problem] = check_examples(*read(path, pm), "classification", pm)
    assert problem.severity == "warning"
    assert problem.location == f"{path}:41"
    assert f"the same example as {path}:6" in problem.message


@pytest.mark.parametrize(
    "count, severity", [(9, "error"), (10, "warning"), (49, "warning"), (50, None)]
)
def test_too_few_examples(tmp_path, pm, count, severity):
    path = write_jsonl(tmp_path / "train.jsonl", labelled(count))
    problems = check_examples(*read(path, pm), "classification", pm)
    if severity is None:
        assert problems == []
    else:
        [problem] = problems
        assert problem.severity == severity and problem.location == str(path)
        assert f"{count} " in problem.message and "50 or more" in problem.message


def test_few_validation_examples_only_warn(tmp_path, pm):
    path = write_jsonl(tmp_path / "validation.jsonl", labelled(4))
    [problem] = check_examples(
        *read(path, pm), "classification", pm, reference_labels=["pos", "neg"], split="validation"
    )
    assert problem.severity == "warning" and "only 4 validation examples" in problem.message


def test_unknown_label_in_validation(tmp_path, pm):
    records = labelled(12)
    records[2]["label"] = "neutral"
    path = write_jsonl(tmp_path / "validation.jsonl", records)
    problems = check_examples(
        *read(path, pm), "classification", pm, reference_labels=["pos", "neg"], split="validation"
    )
    assert problems == [
        Problem(
            f"{path}:3",
            "label 'neutral' does not occur in the training data (training labels: neg, pos)",
        )
    ]


def test_integer_labels_match_by_text(tmp_path, pm):
    path = write_jsonl(tmp_path / "validation.jsonl", labelled(12, labels=(0, 1)))
    assert (
        check_examples(
            *read(path, pm), "classification", pm, reference_labels=["1", "0"], split="validation"
        )
        == []
    )


def test_mixed_label_kinds_and_single_class(tmp_path, pm):
    records = labelled(60)
    records[9]["label"] = 3
    path = write_jsonl(tmp_path / "train.jsonl", records)
    [problem] = check_examples(*read(path, pm), "classification", pm)
    assert problem.location == f"{path}:10" and "label 3 is a number, but" in problem.message
    path = write_jsonl(tmp_path / "one.jsonl", labelled(60, labels=("pos",)))
    [problem] = check_examples(*read(path, pm), "classification", pm)
    assert problem.location == str(path) and "at least two labels" in problem.message


def test_regression_labels_are_not_classes(tmp_path, pm):
    records = [{"text": f"t{i}", "label": i / 7} for i in range(60)]
    path = write_jsonl(tmp_path / "train.jsonl", records)
    assert check_examples(*read(path, pm), "classification", pm) == []
    assert ClassificationTask().label_set(records) is None
    assert ClassificationTask().label_set(labelled(4, labels=(10, 2))) == ["2", "10"]


def features_of(examples, task, tokenizer):
    labels = task.label_set(examples)
    return [task.tokenize(e, tokenizer, labels=labels) for e in examples]


def test_too_long_classification_example(tmp_path, pm, bert_tokenizer):
    records = labelled(60)
    records[20]["text"] = "word " * 40
    path = write_jsonl(tmp_path / "train.jsonl", records)
    examples, locations = read(path, pm)
    task = ClassificationTask()
    [problem], lengths = check_lengths(
        features_of(examples, task, bert_tokenizer), locations, task, 16
    )
    assert problem.location == f"{path}:21" and lengths[20] == 42
    assert re.fullmatch(
        r"42 tokens, longer than data.max_length 16 \(.*raise data.max_length\)", problem.message
    )


def test_too_long_chat_example_is_measured_as_tokenized(tmp_path, pm, chat_tokenizer):
    records = [chat(f"q{i}") for i in range(60)]
    records[5] = chat("a long question " * 20)
    path = write_jsonl(tmp_path / "train.jsonl", records)
    examples, locations = read(path, pm)
    task = ChatTask()
    features = features_of(examples, task, chat_tokenizer)
    limit = len(features[0]["input_ids"]) + 5
    [problem], lengths = check_lengths(features, locations, task, limit)
    assert (
        problem.location == f"{path}:6" and "tokens, longer than data.max_length" in problem.message
    )
    assert lengths[5] == len(features[5]["input_ids"]) > limit


def test_a_job_reports_long_examples_before_training(tmp_path, pm, chat_tokenizer):
    """Checked once, on what the task's tokenize makes; nothing is cut silently later."""
    records = [chat(f"q{i}") for i in range(60)]
    records[9] = chat("many words " * 300)
    path = write_jsonl(tmp_path / "train.jsonl", records)
    with pytest.raises(DataProblems) as caught:
        prepare_data(config(path, task="chat", max_length=128), pm, chat_tokenizer)
    [error] = caught.value.problems
    assert (
        error.location == f"{path}:10"
        and "tokens, longer than data.max_length 128" in error.message
    )


def test_max_length_above_model_limit_warns(tmp_path, pm, bert_tokenizer):
    path = write_jsonl(tmp_path / "train.jsonl", labelled(60))
    data = prepare_data(config(path, max_length=2048), pm, bert_tokenizer)
    [problem] = data.problems
    assert problem.location == "data.max_length" and problem.severity == "warning"
    assert "above the model's limit of 512 tokens" in problem.message


def test_third_party_validators_are_all_called(tmp_path):
    class NoSecrets:
        @hookimpl
        def validate_example(self, example, location):
            if "password" in example.get("text", ""):
                return [Problem(location, "holds a password (remove secrets from training data)")]

    pm = get_plugin_manager(plugins=[("nosecrets", NoSecrets())])
    records = labelled(60)
    records[1] = {"text": "my password", "label": ""}
    path = write_jsonl(tmp_path / "train.jsonl", records)
    problems = check_examples(*read(path, pm), "classification", pm)
    assert sorted(p.message.split(" (")[0] for p in problems) == [
        "holds a password",
        "missing label",
    ]


def test_a_failing_validator_is_named(tmp_path):
    class Broken:
        @hookimpl
        def validate_example(self, example):
            raise KeyError("image")

    pm = get_plugin_manager(plugins=[("broken", Broken())])
    path = write_jsonl(tmp_path / "train.jsonl", labelled(12))
    with pytest.raises(
        PluginError,
        match=rf"plugin 'broken' failed in validate_example at {re.escape(str(path))}:1",
    ):
        check_examples(*read(path, pm), "classification", pm)


# ---------------------------------------------------------------------------------------------
# Splitting and balancing
# ---------------------------------------------------------------------------------------------


def test_stratified_split_keeps_proportions_and_is_seeded():
    examples = labelled(100, labels=("a",) * 7 + ("b",) * 2 + ("c",))  # 70 / 20 / 10
    kept, held = split(examples, 0.2, seed=1, key=BY_LABEL)
    assert len(held) == 20 and len(kept) == 80
    assert Counter(e["label"] for e in held) == {"a": 14, "b": 4, "c": 2}
    assert split(examples, 0.2, seed=1, key=BY_LABEL) == (kept, held)
    assert split(examples, 0.2, seed=2, key=BY_LABEL)[1] != held
    assert sorted(kept + held, key=lambda e: e["text"]) == sorted(examples, key=lambda e: e["text"])
    assert kept == [e for e in examples if e in kept]  # original order


def test_stratified_split_leaves_every_label_in_train():
    examples = [*labelled(20, labels=("a",) * 9 + ("b",)), {"text": "rare", "label": "c"}]
    for seed in range(5):
        kept, held = split(examples, 0.5, seed=seed, key=BY_LABEL)
        assert {e["label"] for e in kept} == {"a", "b", "c"}
        assert len(held) == 10


def test_unstratified_split_of_chat_examples():
    examples = [chat(str(i)) for i in range(30)]
    kept, held = split(examples, 0.1, seed=3)
    assert len(held) == 3 and len(kept) == 27
    assert split(examples, 0.0, seed=3) == (examples, [])
    assert len(split(examples[:5], 0.01, seed=0)[1]) == 1  # a fraction above 0 holds out one


def test_oversample_and_undersample():
    examples = labelled(10, labels=("a",) * 4 + ("b",))  # 8 a, 2 b
    over = balance(examples, "oversample", seed=0, key=BY_LABEL)
    assert Counter(e["label"] for e in over) == {"a": 8, "b": 8}
    assert over[:10] == examples
    under = balance(examples, "undersample", seed=0, key=BY_LABEL)
    assert Counter(e["label"] for e in under) == {"a": 2, "b": 2}
    assert under == balance(examples, "undersample", seed=0, key=BY_LABEL)
    assert balance(examples, "none", seed=0, key=BY_LABEL) == examples
    odd = labelled(3, labels=("a",)) + labelled(2, labels=("b",), prefix="b")  # 3 a, 2 b
    assert Counter(e["label"] for e in balance(odd, "oversample", 1, key=BY_LABEL)) == {
        "a": 3,
        "b": 3,
    }


def test_balance_needs_groups():
    with pytest.raises(
        DataError, match="data.balance: oversample needs examples the task groups by label"
    ):
        balance([chat("x")], "oversample", seed=0, key=None)


# ---------------------------------------------------------------------------------------------
# Summary
# ---------------------------------------------------------------------------------------------


def test_summary_counts_tokens_labels_and_training(bert_tokenizer):
    examples = labelled(40, labels=("a", "a", "b"))
    task = ClassificationTask()
    lengths = [len(f["input_ids"]) for f in features_of(examples, task, bert_tokenizer)]
    cfg = config(
        "x.jsonl", training={"epochs": 2, "batch_size": 4, "gradient_accumulation_steps": 2}
    )
    summary = summarize(examples, task, lengths=lengths, config=cfg)
    assert summary["examples"] == 40
    assert summary["tokens"] == {
        "total": sum(lengths),
        "mean": round(sum(lengths) / 40, 1),
        "max": max(lengths),
    }
    assert summary["labels"] == {"a": 27, "b": 13}
    assert summary["training"]["optimizer_steps"] == 10
    assert summary["training"]["estimated_tokens"] == 2 * sum(lengths)
    capped = config("x.jsonl", training={"max_steps": 2, "batch_size": 4})
    assert summarize(examples, task, lengths=lengths, config=capped)["training"][
        "estimated_tokens"
    ] == round(8 * sum(lengths) / 40)


def test_summary_of_regression_and_chat():
    summary = summarize(
        [{"text": "t", "label": 0.5}, {"text": "u", "label": 1.5}], ClassificationTask()
    )
    assert summary["target"] == {"min": 0.5, "mean": 1.0, "max": 1.5} and "labels" not in summary
    summary = summarize([chat("a"), chat("b")], ChatTask())
    assert summary["messages"] == {"mean": 2.0, "max": 2} and "tokens" not in summary


# ---------------------------------------------------------------------------------------------
# prepare_data: the whole path
# ---------------------------------------------------------------------------------------------


def test_prepare_splits_transforms_and_balances(tmp_path, bert_tokenizer):
    calls = []

    class Upper:
        @hookimpl
        def transform_example(self, example):
            calls.append("upper")
            return {**example, "text": example["text"].upper()}

    class Mark:
        @hookimpl(trylast=True)
        def transform_example(self, example, task):
            calls.append("mark")
            return {**example, "text": example["text"] + "!"} if task == "classification" else None

    class Nothing:
        @hookimpl
        def transform_example(self):
            return None

    pm = get_plugin_manager(plugins=[("mark", Mark()), ("upper", Upper()), ("nothing", Nothing())])
    path = write_jsonl(tmp_path / "train.jsonl", labelled(100, labels=("a", "a", "a", "b")))
    cfg = config(path, validation=0.1, test=0.2, balance="oversample")
    data = prepare_data(cfg, pm, bert_tokenizer)
    assert isinstance(data, PreparedData)
    assert (len(data.validation), len(data.test)) == (10, 20)
    assert Counter(e["label"] for e in data.test.examples) == {"a": 15, "b": 5}
    assert Counter(e["label"] for e in data.train.examples) == {"a": 52, "b": 52}
    assert data.labels == ["a", "b"]
    every = data.train.examples + data.validation.examples + data.test.examples
    assert all(re.fullmatch(r"TEXT \d+!", e["text"]) for e in every)
    assert calls[:2] == ["upper", "mark"]
    # the features are the task's tokenization of the transformed examples, labels as indices
    first = data.train.examples[0]
    assert data.train.features[0]["input_ids"] == bert_tokenizer(first["text"])["input_ids"]
    assert data.train.features[0]["labels"] == data.labels.index(first["label"])
    assert len(data.train.locations) == len(data.train)
    held = set(data.validation.locations) | set(data.test.locations)
    assert not held & set(data.train.locations)
    assert data.summary["train"]["examples"] == 104 and "training" in data.summary["train"]
    assert "split off" in data.summary["test"]["source"]
    again = prepare_data(cfg, pm, bert_tokenizer)  # seeded
    assert (
        again.train.locations == data.train.locations
        and again.test.locations == data.test.locations
    )


def test_prepare_raises_one_error_listing_every_file(tmp_path, pm, bert_tokenizer):
    train = labelled(60)
    train[4]["text"] = ""
    train[30] = dict(train[31])
    train[40]["text"] = "many words " * 5
    train_path = write_jsonl(tmp_path / "train.jsonl", train)
    (tmp_path / "train.jsonl").write_text(train_path.read_text() + "{oops\n")
    validation = labelled(12)
    validation[3]["label"] = "neutral"
    validation[5] = dict(train[0])
    validation_path = write_jsonl(tmp_path / "validation.jsonl", validation)
    cfg = config(
        train_path, validation=str(validation_path), test=str(tmp_path / "test.jsonl"), max_length=8
    )
    with pytest.raises(DataProblems) as caught:
        prepare_data(cfg, pm, bert_tokenizer)
    error = caught.value
    assert isinstance(error, DataError)
    lines = str(error).splitlines()
    errors = [p for p in error.problems if p.severity == "error"]
    assert lines[0].startswith(f"{len(errors)} errors in the data; nothing was trained")
    assert f"{train_path}:5: empty text (every example needs text to classify)" in lines
    assert f"{train_path}:61: not valid JSON" in str(error)
    assert f"{validation_path}:4: label 'neutral' does not occur in the training data" in str(error)
    assert f"{tmp_path / 'test.jsonl'}: file not found" in str(error)
    assert any("tokens, longer than data.max_length 8" in line for line in lines)
    warnings = [str(w) for w in error.problems if w.severity == "warning"]
    assert any(
        w.startswith(f"{train_path}:32: warning: the same example as {train_path}:31")
        for w in warnings
    )
    assert any(
        w.startswith(
            f"{validation_path}:6: warning: the same example as {train_path}:1 in the training"
        )
        for w in warnings
    )
    assert (
        error.summary["train"]["examples"] == 58
    )  # 60 read; the empty and the too long are not usable
    order = [line.split(":")[0] for line in lines[1:]]
    assert order == sorted(
        order, key=[str(train_path), str(validation_path), str(tmp_path / "test.jsonl")].index
    )


def test_prepare_rejects_balance_for_chat(tmp_path, pm):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}") for i in range(60)])
    with pytest.raises(
        DataProblems,
        match=r"data.balance: undersample needs examples that task 'chat' groups by label",
    ):
        prepare_data(config(path, task="chat", balance="undersample"), pm, None)


def test_prepare_chat_without_tokenizer(tmp_path, pm):
    path = write_jsonl(tmp_path / "train.jsonl", [chat(f"q{i}") for i in range(60)])
    data = prepare_data(config(path, task="chat", validation=None), pm, None)
    assert len(data.train) == 60 and len(data.validation) == 0 and data.labels is None
    assert data.problems == [] and data.train.features == [None] * 60


def test_prepare_a_task_format_mismatch(tmp_path, pm):
    path = write_jsonl(tmp_path / "train.jsonl", labelled(60))
    with pytest.raises(DataProblems) as caught:
        prepare_data(config(path, task="chat"), pm, None)
    errors = [p for p in caught.value.problems if p.severity == "error"]
    assert len(errors) == 60
    assert "the chat task takes examples with 'messages'" in errors[0].message


def test_a_transform_can_reject_an_example(tmp_path):
    class Redact:
        @hookimpl
        def transform_example(self, example):
            if "7" in example["text"]:
                raise DataError("cannot redact this example (allowed: plain text)")

    pm = get_plugin_manager(plugins=[("redact", Redact())])
    path = write_jsonl(tmp_path / "train.jsonl", labelled(60))
    with pytest.raises(DataProblems) as caught:
        prepare_data(config(path, validation=None), pm, None)
    assert [p.location for p in caught.value.problems if p.severity == "error"] == [
        f"{path}:{i + 1}" for i in range(60) if "7" in f"text {i}"
    ]


def test_every_problem_names_file_and_line(tmp_path, pm, bert_tokenizer):
    path = tmp_path / "train.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"text": "fine", "label": "a"}',
                "not json",
                '{"text": "", "label": "a"}',
                '{"text": "x", "label": null}',
                '{"text": "x", "label": true}',
                '{"text": 3, "label": "b"}',
                '{"messages": []}',
                '{"text": "fine", "label": "a"}',
                json.dumps({"text": "long " * 50, "label": "b"}),
            ]
        )
        + "\n"
    )
    cfg = config(path, max_length=16, validation=None)
    with pytest.raises(DataProblems) as caught:
        prepare_data(cfg, pm, bert_tokenizer)
    per_line = [p for p in caught.value.problems if p.location != str(path)]
    assert len(per_line) == 8
    for problem in per_line:
        assert LOCATION.match(problem.location), problem
        assert str(problem).startswith(f"{path}:")


def test_render_report(tmp_path):
    summary = {
        "train": {
            "examples": 120,
            "tokens": {"total": 2400, "mean": 20.0, "max": 31},
            "labels": {"a": 60, "b": 60},
            "source": "data/train.jsonl",
            "format": "text-label",
            "training": {
                "epochs": 1,
                "optimizer_steps": 15,
                "examples_seen": 120,
                "estimated_tokens": 2400,
            },
        }
    }
    problems = [
        Problem("data/train.jsonl:9", "the same example as data/train.jsonl:2", "warning"),
        Problem("data/train.jsonl:4", "empty text"),
    ]
    report = render_report(problems, summary, ClassificationTask())
    assert "train: data/train.jsonl (text-label)" in report
    assert "120 examples, 2,400 tokens (mean 20, max 31)" in report
    assert "labels: a 60, b 60" in report and "about 2,400 tokens" in report
    assert report.index("1 error:\n  data/train.jsonl:4: empty text") < report.index("1 warning:")
    assert "data/train.jsonl:9: warning: the same example" in report
    assert render_report([], {"data": {"examples": 3}}).endswith("no problems found")


def test_fixed_labels_order_the_head_and_refuse_others(tmp_path, pm, bert_tokenizer):
    """A federated site takes the server's labels, whatever its own data holds."""
    path = write_jsonl(tmp_path / "train.jsonl", labelled(60, labels=("b", "c")))
    data = prepare_data(config(path, validation=None), pm, bert_tokenizer, labels=["c", "b", "a"])
    assert data.labels == ["c", "b", "a"]
    assert [f["labels"] for f in data.train.features] == [
        ["c", "b", "a"].index(e["label"]) for e in data.train.examples
    ]
    with pytest.raises(DataProblems, match="label 'b' does not occur among the job's labels"):
        prepare_data(config(path, validation=None), pm, bert_tokenizer, labels=["a", "c"])


def test_excluded_examples_are_left_out_and_reported(tmp_path, bert_tokenizer):
    """An "excluded" problem costs its example only: the job goes on without it."""

    class NoSecrets:
        @hookimpl
        def validate_example(self, example, location):
            if "secret" in example["text"]:
                return [Problem(location, "holds a secret (left out of training)", "excluded")]

    pm = get_plugin_manager(plugins=[("nosecrets", NoSecrets())])
    records = labelled(60)
    for i in (3, 17):
        records[i]["text"] += " secret"
    path = write_jsonl(tmp_path / "train.jsonl", records)
    data = prepare_data(config(path, validation=None), pm, bert_tokenizer)
    assert len(data.train) == 58 and f"{path}:4" not in data.train.locations
    assert [(p.location, p.severity) for p in data.problems] == [
        (f"{path}:4", "excluded"),
        (f"{path}:18", "excluded"),
    ]
    report = render_report(data.problems, data.summary, ClassificationTask())
    assert "2 examples excluded:" in report and f"{path}:4: excluded: holds a secret" in report


def test_data_problems_summarise_only_the_usable_examples(tmp_path, pm, bert_tokenizer):
    """A job refused for its data says what the files hold that could train: 60 lines, 3 without
    text, count 57 examples and the tokens of those 57 alone."""
    rows = labelled(60)
    for i in (5, 20, 40):
        rows[i] = {"text": "", "label": "pos"}
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataProblems) as caught:
        prepare_data(config(path, validation=None), pm, bert_tokenizer)
    summary = caught.value.summary["train"]
    assert summary["examples"] == 57
    usable = [r for i, r in enumerate(rows) if i not in (5, 20, 40)]
    assert summary["tokens"]["total"] == sum(
        len(bert_tokenizer(r["text"])["input_ids"]) for r in usable
    )
