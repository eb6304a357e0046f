"""The job config: one YAML file, validated before anything heavy happens.

Every error names the key (``training.learning_rate``), says what is wrong and what is allowed;
an unknown key suggests the nearest valid one. Method sections (``lora:``) and plugin sections are
validated against the pydantic models their plugins registered.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, field_validator

from .errors import ConfigError
from .types import Runner, TrackerFactory, optional


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked strictly."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class EarlyStopping(Section):
    patience: int = Field(3, ge=1, description="evaluations without improvement before stopping")
    metric: str | None = Field(
        None, description="metric to watch; default: the task's primary metric"
    )
    threshold: float = Field(0.0, ge=0, description="smallest change that counts as improvement")


class DataConfig(Section):
    train: str = Field(description="training data file (JSONL or CSV)")
    validation: float | str | None = Field(
        0.1, description="a file, or a fraction of train split off (seeded, stratified for labels)"
    )
    test: float | str | None = Field(None, description="a file, or a fraction of train")
    format: str = Field(
        "auto", description="dataset format name, or auto (from content and suffix)"
    )
    max_length: int = Field(512, ge=8, description="longest example in tokens; longer is an error")
    balance: Literal["none", "oversample", "undersample"] = Field(
        "none", description="resample training examples so that every label is equally frequent"
    )

    @field_validator("validation", "test")
    @classmethod
    def _fraction(cls, value):
        if isinstance(value, float) and not 0.0 <= value < 1.0:
            raise ValueError("a fraction must be at least 0 and below 1")
        return value


class TrainingConfig(Section):
    epochs: float = Field(1, gt=0, description="passes over the training data")
    max_steps: int = Field(
        -1, description="stop after this many optimizer steps (-1: epochs decide)"
    )
    batch_size: int = Field(8, ge=1, description="examples per device per step")
    gradient_accumulation_steps: int = Field(1, ge=1)
    learning_rate: float = Field(2.0e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, le=1, description="fraction of steps spent warming up")
    lr_scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = Field(1.0, gt=0)
    logging_steps: int = Field(5, ge=1)
    eval_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "evaluate every N steps (default: only the baseline before training and the final figures after; "
            "with early_stopping, every 4 x logging_steps)"
        ),
    )
    save_steps: int | None = Field(
        None,
        ge=1,
        description=(
            "checkpoint every N steps and at the last step (default: no checkpoint is kept, so --resume has "
            "nothing to continue from; with early_stopping, at every evaluation)"
        ),
    )
    save_total_limit: int = Field(2, ge=1, description="checkpoints kept")
    early_stopping: EarlyStopping | None = None
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="auto: bf16 weights where the CPU or GPU multiplies bf16 fast, else fp32",
    )
    group_by_length: bool = Field(True, description="batch examples of similar length together")
    max_forward_tokens: Literal["auto"] | StrictInt | None = Field(
        "auto",
        description="a micro-batch with more padded positions (examples x longest) runs forward "
        "and backward in pieces, with the same gradient: the peak memory follows a typical batch; "
        "auto: twice the median micro-batch's (a task may ask for less: dpo runs each micro-batch "
        "in two pieces); null: never split",
    )
    gradient_checkpointing: bool = Field(
        False,
        description="keep only each block's input for backward and recompute the rest: a fraction of "
        "the activation memory for one more forward pass of compute (models that support it)",
    )
    num_threads: int | None = Field(
        None, ge=1, description="torch CPU threads (default: all cores)"
    )

    @field_validator("max_forward_tokens")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, int) and value < 1:
            raise ValueError("must be at least 1 (or auto, or null to never split)")
        return value


class JobConfig(Section):
    """The whole job. Sections that plugins register are kept in ``sections``."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    model: str = Field(description="a registered model name, a Hugging Face id or a local folder")
    task: str = Field(description="a registered task: chat, classification, ...")
    method: str = Field("lora", description="a registered method: lora, dora, adapter, ...")
    data: DataConfig
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: str = Field("runs/run", description="run directory")
    seed: int = 42
    runner: str = Field(
        "local", description="a registered runner: local, or federated ones from plugins"
    )
    trackers: list[str] = Field(default_factory=lambda: ["jsonl"])
    trust_remote_code: bool = Field(False, description="run code shipped with a hub model")

    @property
    def sections(self) -> dict[str, Any]:
        return dict(self.__pydantic_extra__ or {})

    def section(self, name: str) -> Any:
        return (self.__pydantic_extra__ or {}).get(name)

    def to_dict(self) -> dict:
        data = self.model_dump(mode="json", exclude_none=False)
        for name, value in self.sections.items():
            data[name] = value.model_dump(mode="json") if isinstance(value, BaseModel) else value
        return data


CORE_KEYS = set(JobConfig.model_fields)


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        raise ConfigError(
            f"{path}: the config is empty (expected a mapping with model, task, data)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}"
        )
    return data


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``--set section.key=value`` overrides; values are parsed as YAML scalars."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. training.max_steps=20")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: the key is empty")
        set_key(
            data, ".".join(parts), yaml.safe_load(raw) if raw.strip() else "", f"--set {item!r}"
        )
    return data


def set_key(data: dict, key: str, value: Any, where: str) -> dict:
    """Set the dotted ``key`` (``training.learning_rate``) of a raw config mapping to ``value``,
    in place, making the sections it names; ``where`` starts the error when a part of the key is
    not a section."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{where}: {'.'.join(parts[: i + 1])} is not a section")
        node = child
    node[parts[-1]] = value
    return data


def _type_name(annotation: str) -> str:
    return {
        "int_parsing": "an integer",
        "int_type": "an integer",
        "int_from_float": "an integer",
        "float_parsing": "a number",
        "float_type": "a number",
        "bool_parsing": "true or false",
        "bool_type": "true or false",
        "string_type": "a string",
        "dict_type": "a mapping",
        "list_type": "a list",
        "model_type": "a mapping",
        "model_attributes_type": "a mapping",
    }.get(annotation, "")


def _format_error(err: Any, model: type[BaseModel], prefix: str) -> str:
    loc = [str(p) for p in err["loc"] if not isinstance(p, int) or True]
    key = ".".join([prefix, *loc] if prefix else loc)
    etype = err["type"]
    if etype == "extra_forbidden":
        parent_fields = _fields_at(model, err["loc"][:-1])
        near = nearest(str(err["loc"][-1]), parent_fields)
        hint = f"; did you mean {'.'.join([*key.split('.')[:-1], near[0]])!r}?" if near else ""
        allowed = f" (allowed: {', '.join(sorted(parent_fields))})" if parent_fields else ""
        return f"{key}: unknown key{hint}{allowed}"
    if etype == "missing":
        return f"{key}: required key is missing"
    expected = _type_name(etype)
    got = err.get("input")
    if expected:
        return f"{key}: expected {expected}, got {got!r}"
    return f"{key}: {err['msg']} (got {got!r})"


def nearest(key: str, candidates) -> list[str]:
    """The closest valid key: by spelling, else one that the key starts with (``rank`` -> ``r``)."""
    candidates = sorted(candidates)
    near = difflib.get_close_matches(key, candidates, n=1, cutoff=0.5)
    if not near:
        near = sorted(
            (c for c in candidates if key.startswith(c) or c.startswith(key)), key=len, reverse=True
        )[:1]
    return near


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    current: Any = model
    for part in loc:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


SectionModel = TypeVar("SectionModel", bound=BaseModel)


def validate_section(
    model: type[SectionModel], data: Any, prefix: str, source: str
) -> SectionModel:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: {prefix}: expected a mapping, got {data!r}")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{source}: {_format_error(e, model, prefix)}" for e in exc.errors()]
        raise ConfigError("\n".join(lines)) from None


def load_config(data: dict, registries: Any, source: str = "config") -> JobConfig:
    """Validate a config mapping against the core schema and the plugins' sections.

    ``registries`` is the plugin manager's registries: method and task names are checked
    against them, and ``<method>:`` and plugin sections against the schemas they registered.
    """
    data = dict(data)
    methods = registries.kind("methods")
    sections = registries.kind("config_sections")
    method_sections = {name for name, m in methods.items() if m.config_class is not None}
    extra_allowed = method_sections | set(sections)
    for key in list(data):
        if key in CORE_KEYS or key in extra_allowed:
            continue
        near = nearest(str(key), CORE_KEYS | extra_allowed)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"{source}: {key}: unknown key{hint} (allowed: {', '.join(sorted(CORE_KEYS))}, "
            f"or a section of a method or plugin: {', '.join(sorted(extra_allowed)) or 'none'})"
        )
    core = {k: v for k, v in data.items() if k in CORE_KEYS}
    config = validate_section(JobConfig, core, "", source)
    # every name the config gives a registry, reported together: a config naming three plugins
    # that are not installed says so once, not one name per try
    named = [
        ("tasks", config.task, "task"),
        ("methods", config.method, "method"),
        ("runners", config.runner, "runner"),
        *(("trackers", t, "trackers") for t in config.trackers),
    ]
    if config.data.format != "auto":
        named.append(("dataset_formats", config.data.format, "data.format"))
    unknown = [registries.unknown(kind, name, key=f"{source}: {key}") for kind, name, key in named]
    if any(unknown):
        raise ConfigError("\n".join(problem for problem in unknown if problem))
    method = registries.get("methods", config.method, key=f"{source}: method")
    extras: dict[str, Any] = {}
    if method.config_class is not None:
        extras[config.method] = validate_section(
            method.config_class, data.get(config.method), config.method, source
        )
    for name, value in data.items():
        if name in sections:
            extras[name] = validate_section(sections[name], value, name, source)
        elif name in method_sections and name != config.method:
            raise ConfigError(
                f"{source}: {name}: a section for method {name!r}, but method is {config.method!r}; "
                f"remove it or set method: {name}"
            )
    for name, value in extras.items():
        setattr(config, name, value)
    check_plugin_settings(config, registries, source)
    return config


def check_plugin_settings(config: JobConfig, registries: Any, source: str = "config") -> None:
    """Run the ``check(config)`` of every config section, of the runner and of each tracker the
    config names (each optional: :class:`tunewright.types.SectionOptions`, ``RunnerOptions``,
    ``TrackerFactoryOptions``), before anything heavy loads; every problem they return is
    reported together as one :class:`ConfigError` (exit 2)."""
    checks: list[Any] = [
        optional(section, Section, "check") for section in config.sections.values()
    ]
    checks.append(optional(registries.get("runners", config.runner), Runner, "check"))
    checks += [
        optional(registries.get("trackers", name), TrackerFactory, "check")
        for name in config.trackers
    ]
    problems: list[str] = []
    for check in checks:
        if check is not None:
            problems += [f"{source}: {problem}" for problem in check(config) or []]
    if problems:
        raise ConfigError("\n".join(problems))
