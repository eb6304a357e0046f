"""The built-in dataset formats and the generic checks of chat and classification examples."""

from __future__ import annotations

import json

import pytest

from tunewright import DataError, DatasetFormat, Problem, get_plugin_manager
from tunewright.data import read_examples
from tunewright.plugins import formats


@pytest.fixture(scope="module")
def registries():
    return get_plugin_manager().registries


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


CHAT = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"},
    ]
}


# ---------------------------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------------------------


def test_builtin_formats_are_registered(registries):
    found = registries.dataset_formats
    assert {"chat", "prompt-completion", "instruction", "text-label", "csv"} <= set(found)
    for fmt in found.values():
        assert isinstance(fmt, DatasetFormat)
    assert ".jsonl" in found["chat"].suffixes and ".csv" in found["csv"].suffixes
    assert registries.owner("dataset_formats", "chat") == "formats"


# ---------------------------------------------------------------------------------------------
# Auto-detection: suffix, then the first record's keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "record, expected",
    [
        (CHAT, CHAT),
        (
            {"prompt": "2+2?", "completion": "4"},
            {
                "messages": [
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            },
        ),
        (
            {"text": "### Human: Hi ### Assistant: Hello"},
            {
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                ]
            },
        ),
        ({"text": "great film", "label": "pos"}, {"text": "great film", "label": "pos"}),
        (
            {"text": "### Human: is this a label?", "label": 1},
            {"text": "### Human: is this a label?", "label": 1},
        ),
    ],
)
def test_auto_detects_each_jsonl_format(tmp_path, registries, record, expected):
    path = write_jsonl(tmp_path / "data.jsonl", [record, record])
    examples, locations, problems = read_examples(path, registries)
    assert problems == []
    assert examples == [expected, expected]
    assert locations == [f"{path}:1", f"{path}:2"]


def test_detection_uses_first_recognised_record(tmp_path, registries):
    path = tmp_path / "d.jsonl"
    path.write_text('{"oops": 1}\n' + json.dumps({"prompt": "a", "completion": "b"}) + "\n")
    _examples, locations, problems = read_examples(path, registries)
    assert locations == [f"{path}:2"]
    assert len(problems) == 1 and problems[0].location == f"{path}:1"
    assert problems[0].message == (
        "no 'prompt' or 'completion' key (found: oops; "
        'expected {"prompt": str, "completion": str})'
    )


def test_mixed_formats_are_reported_per_line(tmp_path, registries):
    path = write_jsonl(
        tmp_path / "mixed.jsonl",
        [CHAT, {"prompt": "a", "completion": "b"}, CHAT, {"text": "t", "label": "x"}],
    )
    _examples, locations, problems = read_examples(path, registries)
    assert locations == [f"{path}:1", f"{path}:3"]
    assert [p.location for p in problems] == [f"{path}:2", f"{path}:4"]
    assert "prompt-completion data" in problems[0].message and "read as chat" in problems[0].message
    assert (
        "text-label data" in problems[1].message
        and "one file holds one format" in problems[1].message
    )


def test_explicit_format_skips_detection(tmp_path, registries):
    path = write_jsonl(
        tmp_path / "d.jsonl", [{"text": "### Human: a ### Assistant: b", "label": "x"}]
    )
    examples, _, problems = read_examples(path, registries, format="instruction")
    assert problems == [] and examples[0]["messages"][1] == {"role": "assistant", "content": "b"}


def test_unknown_format_name_is_a_config_error(tmp_path, registries):
    from tunewright import ConfigError

    path = write_jsonl(tmp_path / "d.jsonl", [CHAT])
    with pytest.raises(
        ConfigError, match=r"data.format: unknown dataset format 'chatml'.*registered: chat"
    ):
        read_examples(path, registries, format="chatml")


def test_json_array_file_numbers_elements_by_line(tmp_path, registries):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a", "label": 1},\n  {"text": "b",\n   "label": 0}\n]\n')
    examples, locations, problems = read_examples(path, registries)
    assert problems == []
    assert examples == [{"text": "a", "label": 1}, {"text": "b", "label": 0}]
    assert locations == [f"{path}:2", f"{path}:3"]


def test_broken_json_array_reports_line(tmp_path, registries):
    path = tmp_path / "d.json"
    path.write_text('[\n  {"text": "a", "label": 1},\n  {"text": "b" "label": 0}\n]\n')
    examples, _, problems = read_examples(path, registries)
    assert len(examples) == 1
    assert problems[0].location == f"{path}:3" and "not valid JSON" in problems[0].message


# ---------------------------------------------------------------------------------------------
# Each format's records
# ---------------------------------------------------------------------------------------------


def test_chat_keeps_extra_keys_and_rejects_bad_structure():
    chat = formats.ChatFormat()
    example = chat.to_example(
        {"messages": [{"role": "user", "content": "x", "weight": 0}], "id": 7}
    )
    assert example == {"messages": [{"role": "user", "content": "x", "weight": 0}], "id": 7}
    with pytest.raises(DataError, match="'messages' must be a list of messages, got a string"):
        chat.to_example({"messages": "hello"})
    with pytest.raises(
        DataError, match=r"message 2: no 'role' \(allowed: system, user, assistant\)"
    ):
        chat.to_example({"messages": [{"role": "user", "content": "x"}, {"content": "y"}]})
    with pytest.raises(DataError, match=r"message 1 \(user\): no 'content'"):
        chat.to_example({"messages": [{"role": "user"}]})
    with pytest.raises(DataError, match=r"content must be text .* got a number"):
        chat.to_example({"messages": [{"role": "user", "content": 3}]})
    with pytest.raises(DataError, match="expected a JSON object .* got a list"):
        chat.to_example([1, 2])


def test_prompt_completion_takes_message_lists():
    fmt = formats.PromptCompletionFormat()
    example = fmt.to_example(
        {
            "prompt": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
            "completion": [{"role": "assistant", "content": "a"}],
        }
    )
    assert [m["role"] for m in example["messages"]] == ["system", "user", "assistant"]
    with pytest.raises(DataError, match="'completion' must be a string"):
        fmt.to_example({"prompt": "p", "completion": 5})


def test_instruction_multi_turn_with_leading_system_text():
    fmt = formats.InstructionFormat()
    example = fmt.to_example(
        {
            "text": "You are kind.\n### Human: hi\n### Assistant: hello\n"
            "### Human:  more?\n### Assistant: sure"
        }
    )
    assert example["messages"] == [
        {"role": "system", "content": "You are kind."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "more?"},
        {"role": "assistant", "content": "sure"},
    ]
    with pytest.raises(DataError, match="no '### Human:' or '### Assistant:' marker"):
        fmt.to_example({"text": "just words"})


def test_text_label_rejects_bad_labels():
    fmt = formats.TextLabelFormat()
    assert fmt.to_example({"text": "t", "label": 0.5}) == {"text": "t", "label": 0.5}
    with pytest.raises(DataError, match="'label' must be a string or a number, got true/false"):
        fmt.to_example({"text": "t", "label": True})
    with pytest.raises(DataError, match="no 'label' key"):
        fmt.to_example({"text": "t"})
    with pytest.raises(DataError, match="'text' must be a string, got a list"):
        fmt.to_example({"text": ["a"], "label": "x"})


def test_csv_with_aliases_quotes_and_label_types(tmp_path, registries):
    path = tmp_path / "d.csv"
    path.write_text(
        'id,Sentence,Category\n1,"hello, world",pos\n2,"two\nlines",3\n\n3,x,0.25\n'
        "4,y,\n5,too,many,fields\n",
        encoding="utf-8",
    )
    examples, locations, problems = read_examples(path, registries)
    assert examples == [
        {"text": "hello, world", "label": "pos"},
        {"text": "two\nlines", "label": 3},
        {"text": "x", "label": 0.25},
        {"text": "y", "label": None},
    ]
    assert locations == [f"{path}:2", f"{path}:3", f"{path}:6", f"{path}:7"]
    assert [p.location for p in problems] == [f"{path}:8"]
    assert "4 fields, but the header has 3 (id, Sentence, Category)" in problems[0].message


def test_tsv_is_tab_separated(tmp_path, registries):
    path = tmp_path / "d.tsv"
    path.write_text("text\tlabel\na, b\tyes\n")
    examples, _, problems = read_examples(path, registries)
    assert problems == [] and examples == [{"text": "a, b", "label": "yes"}]


def test_csv_without_label_column(tmp_path, registries):
    path = tmp_path / "d.csv"
    path.write_text("text,score\nhi,1\n")
    examples, _, problems = read_examples(path, registries)
    assert examples == []
    assert problems == [
        Problem(
            f"{path}:1",
            "the header (text, score) has no label column (allowed names: label, category, class)",
        )
    ]


def test_csv_bad_encoding_costs_one_row(tmp_path, registries):
    path = tmp_path / "d.csv"
    path.write_bytes(b"text,label\ncaf\xe9,a\nok,b\n")
    examples, _, problems = read_examples(path, registries)
    assert examples == [{"text": "ok", "label": "b"}]
    assert problems[0].location == f"{path}:2" and "not UTF-8" in problems[0].message
