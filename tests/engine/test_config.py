"""Config validation: every error names the key, says what is wrong and what is allowed."""

from __future__ import annotations

import pytest
import yaml

from tunewright import ConfigError, get_plugin_manager
from tunewright.config import apply_overrides, load_config, read_yaml

MINIMAL = """
model: smollm2-135m-instruct   # a registered model name, a Hugging Face id or a local folder
task: chat                     # chat | classification (more tasks come from plugins)
method: lora                   # any registered method
lora: {r: 8, alpha: 16}
data:
  train: data/train.jsonl
  validation: 0.1              # a file, or a fraction split off train (seeded, stratified for labels)
training: {epochs: 1, max_steps: 60, batch_size: 8, learning_rate: 2.0e-4}
output: runs/chat-lora
"""


@pytest.fixture(scope="module")
def registries():
    return get_plugin_manager(env={}).registries


def load(text: str, registries, overrides=()):
    return load_config(
        apply_overrides(yaml.safe_load(text), list(overrides)), registries, source="job.yaml"
    )


def test_the_minimal_config_of_the_issue_loads_as_written(registries):
    config = load(MINIMAL, registries)
    assert config.model == "smollm2-135m-instruct" and config.method == "lora"
    assert config.section("lora").r == 8
    assert config.training.max_steps == 60 and config.data.validation == 0.1


def test_unknown_key_suggests_the_nearest(registries):
    with pytest.raises(ConfigError) as info:
        load(MINIMAL.replace("learning_rate", "learnin_rate"), registries)
    message = str(info.value)
    assert "job.yaml: training.learnin_rate: unknown key" in message
    assert "did you mean 'training.learning_rate'?" in message


def test_unknown_top_level_key_suggests_the_nearest(registries):
    with pytest.raises(ConfigError, match="traning: unknown key; did you mean 'training'"):
        load(MINIMAL + "traning: {}\n", registries)


def test_wrong_type_names_key_and_expected_type(registries):
    with pytest.raises(ConfigError, match=r"training.batch_size: expected an integer, got 'eight'"):
        load(MINIMAL.replace("batch_size: 8", "batch_size: eight"), registries)


def test_missing_required_key(registries):
    with pytest.raises(ConfigError, match="data.train: required key is missing"):
        load(MINIMAL.replace("train: data/train.jsonl", "test: 0.1"), registries)


def test_bad_fraction(registries):
    with pytest.raises(ConfigError, match="data.validation"):
        load(MINIMAL.replace("validation: 0.1", "validation: 1.5"), registries)


def test_unknown_method_lists_registered(registries):
    with pytest.raises(ConfigError) as info:
        load(MINIMAL.replace("method: lora", "method: lorra"), registries)
    assert "unknown method 'lorra'; did you mean 'lora'?" in str(info.value)
    assert "registered:" in str(info.value)


def test_method_section_is_validated_by_its_plugin_schema(registries):
    with pytest.raises(ConfigError, match=r"lora.rank: unknown key; did you mean 'lora.r'"):
        load(MINIMAL.replace("{r: 8, alpha: 16}", "{rank: 8, alpha: 16}"), registries)


def test_section_of_another_method_is_an_error(registries):
    with pytest.raises(ConfigError, match="a section for method 'lora', but method is 'full'"):
        load(MINIMAL.replace("method: lora", "method: full"), registries)


def test_overrides_set_any_key(registries):
    config = load(
        MINIMAL, registries, ["training.max_steps=5", "lora.r=4", "data.validation=data/v.jsonl"]
    )
    assert config.training.max_steps == 5 and config.section("lora").r == 4
    assert config.data.validation == "data/v.jsonl"


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_overrides({}, ["training.max_steps"])


def test_read_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        read_yaml(tmp_path / "nope.yaml")
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="the config is empty"):
        read_yaml(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(broken)


def test_plugin_config_section_is_validated():
    from pydantic import Field

    from tunewright import Section, hookimpl

    class Redaction(Section):
        patterns: list[str] = Field(default_factory=list)

    class Plugin:
        @hookimpl
        def register_config_sections(self, register):
            register("redaction", Redaction)

    registries = get_plugin_manager(plugins=[("redact", Plugin())], env={}).registries
    config = load(MINIMAL + "redaction: {patterns: ['[0-9]+']}\n", registries)
    assert config.section("redaction").patterns == ["[0-9]+"]
    with pytest.raises(
        ConfigError, match="redaction.pattern: unknown key; did you mean 'redaction.patterns'"
    ):
        load(MINIMAL + "redaction: {pattern: []}\n", registries)


def test_every_unknown_registration_is_reported_in_one_error(registries):
    """Three plugins that are not installed: one error naming the three, each in one style."""
    with pytest.raises(ConfigError) as caught:
        load(
            MINIMAL, registries, ["runner=flower", "data.format=parquet", "trackers=[jsonl, wandb]"]
        )
    lines = str(caught.value).splitlines()
    assert len(lines) == 3, lines
    assert lines[0].startswith("job.yaml: runner: unknown runner 'flower'")
    assert lines[1].startswith("job.yaml: trackers: unknown tracker 'wandb'")
    assert lines[2].startswith("job.yaml: data.format: unknown dataset format 'parquet'")
    assert all("(registered: " in line for line in lines)
    assert "jsonl" in lines[1] and "local" in lines[0]


class Remote:
    """A runner, a tracker factory and a config section that check their own settings."""

    from tunewright import Section, hookimpl

    class RemoteSettings(Section):
        host: str = "localhost"
        port: int = 0

        def check(self, config):
            if self.port == 0 and config.runner == "remote":
                return ["remote.port: the remote runner needs a port (1-65535)"]
            return []

    @staticmethod
    def runner(run):  # pragma: no cover - never reached: the checks refuse the config
        raise AssertionError("the runner ran although its check refused the config")

    @staticmethod
    def check_runner(config):
        if config.training.gradient_accumulation_steps != 1:
            return ["training.gradient_accumulation_steps: the remote runner takes 1 only"]
        return None

    class Board:
        def __init__(self, run):
            raise AssertionError("made although its check refused the config")

        @classmethod
        def check(cls, config):
            remote = config.section("remote")
            if remote is None or remote.host == "localhost":
                return ["remote.host: the board tracker needs a remote host (not localhost)"]
            return []

    @hookimpl
    def register_runners(self, register):
        self.runner.check = self.check_runner
        register("remote", self.runner)

    @hookimpl
    def register_trackers(self, register):
        register("board", self.Board)

    @hookimpl
    def register_config_sections(self, register):
        register("remote", self.RemoteSettings)


def test_runners_trackers_and_sections_check_their_settings_with_the_config():
    pm = get_plugin_manager(env={}, plugins=[("remote", Remote())])
    bad = [
        "runner=remote",
        "trackers=[jsonl, board]",
        "training.gradient_accumulation_steps=2",
        "remote.host=localhost",
    ]
    with pytest.raises(ConfigError) as caught:
        load(MINIMAL, pm.registries, bad)
    assert str(caught.value).splitlines() == [
        "job.yaml: remote.port: the remote runner needs a port (1-65535)",
        "job.yaml: training.gradient_accumulation_steps: the remote runner takes 1 only",
        "job.yaml: remote.host: the board tracker needs a remote host (not localhost)",
    ]
    good = ["runner=remote", "trackers=[jsonl, board]", "remote.host=10.0.0.2", "remote.port=8080"]
    config = load(MINIMAL, pm.registries, good)
    assert config.section("remote").port == 8080
    assert load(MINIMAL, pm.registries).runner == "local"  # nothing named: nothing refused
