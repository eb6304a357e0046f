"""The built-in tasks' own rules: what a chat or classification example needs, labels across a
file, the task a file's format says its examples are for."""

from __future__ import annotations

import pytest

from tunewright import Problem, get_plugin_manager
from tunewright.plugins.tasks import ChatTask, ClassificationTask

CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def chat_messages(*pairs):
    return {"messages": [{"role": role, "content": content} for role, content in pairs]}


@pytest.mark.parametrize(
    "example, expected",
    [
        (
            chat_messages(("user", "hi"), ("bot", "hello")),
            [
                "message 2: unknown role 'bot' (allowed: system, user, assistant)",
                "no assistant message (a chat example needs an assistant reply to learn from)",
            ],
        ),
        (
            chat_messages(("user", "  "), ("assistant", "x")),
            ["message 1 (user): empty content (every message needs text)"],
        ),
        (
            chat_messages(("user", "hi")),
            ["no assistant message (a chat example needs an assistant reply to learn from)"],
        ),
        (
            chat_messages(("user", "hi"), ("assistant", "x"), ("user", "and?")),
            [
                "the last message is from user (a conversation must end with an assistant message; "
                "nothing after it would be learnt)"
            ],
        ),
        (
            chat_messages(("user", "hi"), ("system", "be nice"), ("assistant", "x")),
            [
                "message 2: a system message after the first message (a system message is allowed only first)"
            ],
        ),
        (
            {"messages": []},
            ["no messages (a chat example needs at least a user and an assistant message)"],
        ),
        (CHAT, []),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "text", "text": "hi"}, {"type": "image_url"}],
                    },
                    {"role": "assistant", "content": "a cat"},
                ]
            },
            [
                "1 image part: the chat task trains on text only; image parts need a vision task (task: image-to-text)"
            ],
        ),
        (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "hi"},
                            {"type": "text", "text": "there"},
                        ],
                    },
                    {"role": "assistant", "content": "ok"},
                ]
            },
            [],
        ),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "text", "text": ""}]},
                    {"role": "assistant", "content": "a cat"},
                ]
            },
            ["message 1 (user): empty content (every message needs text)"],
        ),
    ],
)
def test_chat_checks(example, expected):
    problems = ChatTask().validate(example, "d.jsonl:3")
    assert problems == [Problem("d.jsonl:3", message) for message in expected]


@pytest.mark.parametrize(
    "example, expected",
    [
        ({"text": "", "label": "a"}, ["empty text (every example needs text to classify)"]),
        (
            {"text": "t", "label": None},
            ["missing label (expected a class name, a whole number, or a number for regression)"],
        ),
        (
            {"text": "t", "label": ""},
            ["missing label (expected a class name, a whole number, or a number for regression)"],
        ),
        ({"text": "t", "label": float("nan")}, ["label nan is not a finite number"]),
        ({"text": "t", "label": 2}, []),
    ],
)
def test_classification_checks(example, expected):
    problems = ClassificationTask().validate(example, "d.csv:2")
    assert [p.message for p in problems] == expected
    assert all(p.location == "d.csv:2" and p.severity == "error" for p in problems)


def test_example_of_the_wrong_shape_for_the_task():
    [problem] = ChatTask().validate({"text": "t", "label": 1}, "a:1")
    assert (
        "the chat task takes examples with 'messages', but this example has text, label"
        in problem.message
    )
    [problem] = ClassificationTask().validate(CHAT, "a:1")
    assert "the classification task takes examples with 'text' and 'label'" in problem.message


def test_text_parts_are_rendered_as_text(tiny_llama_dir):

    tokenizer = ChatTask().load_tokenizer(tiny_llama_dir)
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
        ]
    }
    assert ChatTask().tokenize(parts, tokenizer) == ChatTask().tokenize(CHAT, tokenizer)


def test_chat_tokenize_never_truncates(tiny_llama_dir):
    tokenizer = ChatTask().load_tokenizer(tiny_llama_dir)
    long = {
        "messages": [
            {"role": "user", "content": "word " * 600},
            {"role": "assistant", "content": "ok"},
        ]
    }
    features = ChatTask().tokenize(long, tokenizer)
    assert len(features["input_ids"]) > 600 and len(features["labels"]) == len(
        features["input_ids"]
    )


def test_labels_across_a_file():
    task = ClassificationTask()
    rows = [{"text": "a", "label": "pos"}, {"text": "b", "label": 3}, {"text": "c", "label": "neg"}]
    [problem] = task.check_split(rows, ["f:1", "f:2", "f:3"], split="train", reference_labels=None)
    assert problem.location == "f:2" and "label 3 is a number, but f:1 has 'pos'" in problem.message
    same = [{"text": str(i), "label": "pos"} for i in range(3)]
    [problem] = task.check_split(same, ["f:1", "f:2", "f:3"], split="train", reference_labels=None)
    assert problem.location == "f" and "every example has the label 'pos'" in problem.message
    held = [{"text": "x", "label": "neutral"}, {"text": "y", "label": "pos"}]
    [problem] = task.check_split(
        held, ["v:1", "v:2"], split="validation", reference_labels=["neg", "pos"]
    )
    assert (
        problem.location == "v:1"
        and "label 'neutral' does not occur in the training data" in problem.message
    )
    assert (
        task.check_split(
            [{"text": "x", "label": 0.5}, {"text": "y", "label": 1.5}],
            ["r:1", "r:2"],
            split="validation",
            reference_labels=None,
        )
        == []
    )


def test_stratification_and_labels_follow_the_task():
    task = ClassificationTask()
    assert task.label_set([{"label": 10}, {"label": 2}, {"label": "2"}]) == ["2", "10"]
    assert task.label_set([{"label": 0.5}, {"label": 2}]) is None  # regression
    assert task.stratify_key({"label": 3}) == "3" and task.stratify_key({"label": 0.25}) is None
    assert task.metric_for(None) == "mse" and task.metric_for(["a", "b"]) == "accuracy"
    assert task.metric_directions["mse"] == "min" and task.metric_directions["f1"] == "max"
    assert ChatTask().metric_directions == {
        "loss": "min",
        "perplexity": "min",
        "mean_token_accuracy": "max",
    }


@pytest.mark.parametrize(
    "rows, task",
    [
        ([CHAT], "chat"),
        ([{"prompt": "p", "completion": "c"}], "chat"),
        ([{"text": "t", "label": 1}], "classification"),
        (
            [
                {
                    "messages": [
                        {
                            "role": "user",
                            "content": [{"type": "image_url", "image_url": {"url": "a.png"}}],
                        },
                        {"role": "assistant", "content": "a cat"},
                    ]
                }
            ],
            "image-to-text",
        ),
    ],
)
def test_a_format_names_the_task_of_its_examples(tmp_path, rows, task):
    import json

    from tunewright.data import task_for_file

    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert task_for_file(path, get_plugin_manager().registries) == task
