"""The built-in graders, their config checks and the python grader's sandbox."""

from __future__ import annotations

import pytest

from tunewright import ConfigError, get_plugin_manager, hookimpl
from tunewright.grading import build_grader, grade_items

ANSWER = {"output_text": "The capital of France is Paris."}
ITEM = {"answer": "Paris", "choices": [{"label": "a"}]}


@pytest.fixture(scope="module")
def pm():
    return get_plugin_manager()


def grade(pm, spec, sample=ANSWER, item=ITEM):
    return build_grader(spec, pm).grade(sample, item)


@pytest.mark.parametrize(
    "operation,expected", [("eq", 0.0), ("ne", 1.0), ("like", 1.0), ("ilike", 1.0)]
)
def test_string_check_operations(pm, operation, expected):
    spec = {
        "type": "string_check",
        "name": "capital",
        "input": "{{ sample.output_text }}",
        "reference": "{{item.answer}}",
        "operation": operation,
    }
    assert grade(pm, spec) == expected
    lower = {"output_text": "paris"}
    assert grade(pm, {**spec, "operation": "ilike"}, lower) == 1.0
    assert grade(pm, {**spec, "operation": "like"}, lower) == 0.0


def test_templates_read_paths_and_refuse_what_is_not_there(pm):
    spec = {
        "type": "string_check",
        "input": "{{item.choices[0].label}}",
        "reference": "a",
        "operation": "eq",
    }
    assert grade(pm, spec) == 1.0
    with pytest.raises(KeyError, match="item.missing"):
        grade(pm, {**spec, "input": "{{item.missing}}"})
    with pytest.raises(ConfigError, match="starts with sample. or item."):
        build_grader({**spec, "input": "{{ output_text }}"}, pm)
    with pytest.raises(ConfigError, match="operation 'neq' is not one of eq, ne, like, ilike"):
        build_grader({**spec, "operation": "neq"}, pm)
    with pytest.raises(ConfigError, match="unknown grader 'string_chek'; did you mean"):
        build_grader({**spec, "type": "string_chek"}, pm)


@pytest.mark.parametrize("metric", ["fuzzy_match", "bleu", "gleu", "rouge_1", "rouge_2", "rouge_l"])
def test_text_similarity_is_one_for_the_same_text_and_less_for_another(pm, metric):
    spec = {
        "type": "text_similarity",
        "name": "sim",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": metric,
    }
    same = grade(pm, spec, item={"reference": ANSWER["output_text"]})
    other = grade(pm, spec, item={"reference": "Berlin is the capital of Germany, they say."})
    assert same == pytest.approx(1.0) and 0.0 <= other < same


def test_text_similarity_refuses_meteor_and_unknown_metrics(pm):
    spec = {"type": "text_similarity", "input": "a", "reference": "b"}
    with pytest.raises(ConfigError, match="WordNet"):
        build_grader({**spec, "evaluation_metric": "meteor"}, pm)
    with pytest.raises(ConfigError, match="'rouge_9' is not one of"):
        build_grader({**spec, "evaluation_metric": "rouge_9"}, pm)


@pytest.mark.slow
def test_cosine_uses_the_packaged_minilm(pm):
    spec = {
        "type": "text_similarity",
        "input": "{{sample.output_text}}",
        "reference": "{{item.reference}}",
        "evaluation_metric": "cosine",
    }
    near = grade(pm, spec, item={"reference": "Paris is France's capital city."})
    far = grade(pm, spec, item={"reference": "Photosynthesis needs light and water."})
    assert 1.0 >= near > far >= 0.0


def exact(name="exact"):
    return {
        "type": "string_check",
        "name": name,
        "input": "{{sample.output_text}}",
        "reference": "{{item.answer}}",
        "operation": "like",
    }


def test_multi_evaluates_a_formula_over_named_graders(pm):
    spec = {
        "type": "multi",
        "name": "both",
        "graders": {"has": exact(), "same": {**exact(), "operation": "eq"}},
        "calculate_output": "min(1, (has + same) / 2 + 0.5 ^ 2)",
    }
    assert grade(pm, spec) == pytest.approx(0.75)
    with pytest.raises(ValueError, match="division by zero"):
        grade(pm, {**spec, "calculate_output": "has / same"})


@pytest.mark.parametrize(
    "formula,why",
    [
        ("__import__('os').system('true')", "only min, max, .* may be called"),
        ("has.__class__", "Attribute is not allowed"),
        ("[has][0]", "Subscript is not allowed"),
        ("has if has else 0", "IfExp is not allowed"),
        ("open('x')", "only min, max, .* may be called"),
        ("has + size", "'size' is neither a grader of this multi grader \\(has\\)"),
        ("'a' * 3", "only numbers"),
        ("has +", "cannot parse"),
    ],
)
def test_multi_refuses_anything_but_arithmetic(pm, formula, why):
    spec = {"type": "multi", "graders": {"has": exact()}, "calculate_output": formula}
    with pytest.raises(ConfigError, match=why):
        build_grader(spec, pm)


def test_multi_cannot_nest(pm):
    inner = {"type": "multi", "graders": {"a": exact()}, "calculate_output": "a"}
    with pytest.raises(ConfigError, match="cannot nest"):
        build_grader({"type": "multi", "graders": {"x": inner}, "calculate_output": "x"}, pm)


def test_score_model_reads_the_judges_number_and_clips_it_to_the_range(pm):
    spec = {
        "type": "score_model",
        "name": "judge",
        "model": "runs/judge",
        "range": [1, 7],
        "input": [
            {"role": "user", "content": "Grade {{sample.output_text}} against {{item.answer}}"}
        ],
    }
    judge = build_grader(spec, pm)
    asked = []
    answers = iter(['{"result": 5, "steps": []}', "I give it 9", "no idea"])
    judge.sampler = lambda messages: asked.append(messages) or next(answers)
    assert judge.grade(ANSWER, ITEM) == 5.0
    assert asked[0][0]["content"] == "Grade The capital of France is Paris. against Paris"
    assert judge.grade(ANSWER, ITEM) == 7.0
    with pytest.raises(ValueError, match="no number"):
        judge.grade(ANSWER, ITEM)


# -- the python grader's sandbox -------------------------------------------------------------------


def python_grader(pm, source, **limits):
    return build_grader({"type": "python", "name": "mine", "source": source, **limits}, pm)


def test_python_grader_grades_in_its_own_process(pm):
    grader = python_grader(
        pm,
        "import os\n"
        "def grade(sample, item):\n"
        "    print('noise')\n"
        "    return float(item['answer'] in sample['output_text']) * (os.getpid() > 0)\n",
    )
    assert grader.grade(ANSWER, ITEM) == 1.0
    assert grader.grade({"output_text": "Lyon"}, ITEM) == 0.0


@pytest.mark.parametrize(
    "body,limits,why",
    [
        ("while True:\n        pass", {"timeout": 1}, "timed out after 1 s"),
        ("x = bytearray(10 * 1024 ** 3)\n    return 1.0", {}, "MemoryError"),
        (
            "import socket\n    socket.create_connection(('127.0.0.1', 9), timeout=2)\n    return 1.0",
            {},
            "OSError: .*Network is unreachable",
        ),
        ("raise RuntimeError('bad item')", {}, "RuntimeError: bad item"),
        ("return 1.5", {}, r"returned 1.5, outside 0..1"),
        ("return 'yes'", {}, "returned str 'yes', not a float"),
    ],
    ids=["loops", "allocates-10gb", "connects-out", "raises", "out-of-range", "not-a-number"],
)
def test_python_grader_failures_are_per_example_errors(pm, body, limits, why):
    grader = python_grader(pm, f"def grade(sample, item):\n    {body}\n", **limits)
    with pytest.raises(Exception, match=why):
        grader.grade(ANSWER, ITEM)
    # in a batch the failure is that example's error and the rest are graded
    report = grade_items(grader, ["x"], [ITEM], ["data.jsonl:1"])
    assert report.grades == [None] and report.errors[0] and "mine" in report.errors[0]


def test_python_grader_refuses_bad_source_when_built(pm):
    with pytest.raises(ConfigError, match="line 1"):
        python_grader(pm, "def grade(sample item):\n")
    with pytest.raises(ConfigError, match="'source' .* or 'file'"):
        build_grader({"type": "python", "name": "x"}, pm)
    with pytest.raises(ConfigError, match="timeout must be"):
        python_grader(pm, "def grade(s, i):\n    return 1\n", timeout=0)


def test_grade_items_summarises_mean_spread_and_worst(pm):
    grader = build_grader(exact(), pm)
    outputs = ["Paris", "Lyon", "Paris!", "Nice"]
    report = grade_items(grader, outputs, [ITEM] * 4, [f"d.jsonl:{i}" for i in range(1, 5)])
    summary = report.summary(worst=2)
    assert summary["mean"] == 0.5 and summary["std"] == 0.5 and summary["errors"] == 0
    assert [row["grade"] for row in summary["worst"]] == [0.0, 0.0]


def test_hook_register_graders(pm):
    class Length:
        @hookimpl
        def register_graders(self, register):
            def length(spec, build):
                limit = int(spec.get("limit", 10))

                class Short:
                    name = spec.get("name", "length")

                    def grade(self, sample, item):
                        return float(len(sample["output_text"]) <= limit)

                return Short()

            register("length", length)

    manager = get_plugin_manager(plugins=[("length-grader", Length())])
    assert "length" in manager.registries.graders
    grader = build_grader({"type": "length", "limit": 5}, manager)
    assert grader.grade({"output_text": "Paris"}, {}) == 1.0
    combined = build_grader(
        {
            "type": "multi",
            "graders": {"short": {"type": "length", "limit": 5}, "right": exact()},
            "calculate_output": "short * right",
        },
        manager,
    )
    assert combined.grade({"output_text": "Paris"}, ITEM) == 1.0
    assert combined.grade(ANSWER, ITEM) == 0.0


def test_a_bundle_is_answered_by_its_registered_edge_runtime(tmp_path):
    import json

    import yaml

    from tunewright.grading import grade_path

    class Echo:
        runtime, task_kind, generates = "echo", "causal_lm", True

        def __init__(self, folder, manifest, threads=None):
            self.folder = folder

        def generate(self, messages, **options):
            return f"  {messages[-1]['content'].split()[-1]}  "

    class Runtimes:
        @hookimpl
        def register_edge_runtimes(self, register):
            register("echo", Echo)

    manager = get_plugin_manager(plugins=[("echo-runtime", Runtimes())])
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(json.dumps({"runtime": "echo", "task_kind": "causal_lm"}))
    data = tmp_path / "items.jsonl"
    data.write_text(
        json.dumps(
            {"input": {"messages": [{"role": "user", "content": "say Paris"}]}, "answer": "Paris"}
        )
        + "\n"
        + json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "say Rome"},
                    {"role": "assistant", "content": "x"},
                ],
                "answer": "Paris",
            }
        )
        + "\n"
    )
    grader = tmp_path / "g.yaml"
    grader.write_text(yaml.safe_dump(exact()))
    result = grade_path(bundle, data, grader, manager)
    assert "baseline" not in result and result["tuned"]["mean"] == 0.5
    assert [row["output"] for row in result["tuned"]["worst"]] == ["Rome", "Paris"]
