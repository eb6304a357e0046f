"""Every registered method, built-in or third-party, through its whole life on a tiny model.

One table (PEFT's ``TEST_CASES`` style): apply -> forward -> backward -> optimizer steps (the loss
falls) -> trainable state -> save -> load into a fresh base (same logits) -> merge (close logits, a
plain transformers model). Method-specific behaviour is tested in ``test_method_*.py``.
"""

from __future__ import annotations

import pytest
import torch

import tunewright
from tunewright import ConfigError, UsageError, get_plugin_manager
from tunewright.config import validate_section

# Tiny matrices: one thread is faster, and several oversubscribe a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

# Collected from a fresh manager, so methods of installed third-party plugins join the table.
PM = get_plugin_manager()
METHODS = PM.registries.methods
BUILTIN = {name for name in METHODS if PM.infos[PM.registries.owner("methods", name)].builtin}
EXPECTED_BUILTIN = {"lora", "dora", "ia3", "prompt_tuning", "adapter", "full", "freeze"}
TASK_KINDS = ("causal_lm", "sequence_classification")

# Learning rates that let each method move the loss of a random tiny model in 20 steps, and the
# fraction of the starting loss (in eval mode) the loss must end below, measured with margin.
# A random tiny BERT pools nearly the same features for every sentence, so methods without much
# capacity of their own (ia3, adapter, prompt_tuning) get a classification batch only as far as
# the head's bias takes them; that they train at all is checked by "every trainable tensor moved".
LEARNING_RATES = {
    "lora": 1e-2,
    "dora": 3e-2,
    "ia3": 1e-1,
    "prompt_tuning": 1e-2,
    "adapter": 3e-2,
    "full": 1e-2,
    "freeze": 1e-2,
}
LOSS_RATIO = {
    ("lora", "causal_lm"): 0.95,
    ("lora", "sequence_classification"): 0.6,
    ("dora", "causal_lm"): 0.95,
    ("dora", "sequence_classification"): 0.6,
    ("ia3", "causal_lm"): 0.99,
    ("ia3", "sequence_classification"): 0.97,
    ("prompt_tuning", "causal_lm"): 0.99,
    ("prompt_tuning", "sequence_classification"): 0.97,
    ("adapter", "causal_lm"): 0.99,
    ("adapter", "sequence_classification"): 0.97,
    ("full", "causal_lm"): 0.5,
    ("full", "sequence_classification"): 0.6,
    ("freeze", "causal_lm"): 0.95,
    ("freeze", "sequence_classification"): 0.6,
}
DEFAULT_LR, DEFAULT_LOSS_RATIO = 1e-2, 0.99
STEPS = 20
# Methods whose applied model computes exactly what the base model does until it trains.
STARTS_AS_BASE = {"lora", "dora", "ia3", "adapter", "full", "freeze"}
# Methods that refuse merge() with a UsageError by design.
CANNOT_MERGE = {"prompt_tuning"}

TEXTS = [
    "The cat sat on the mat.",
    "Paris is the capital of France.",
    "I loved this film, truly.",
    "Terrible service, never again!",
]
LABELS = [0, 1, 2, 1]


@pytest.fixture(scope="module")
def batches(tiny_llama_dir, tiny_bert_dir):
    from transformers import AutoTokenizer

    causal = dict(
        AutoTokenizer.from_pretrained(tiny_llama_dir)(TEXTS, padding=True, return_tensors="pt")
    )
    causal["labels"] = causal["input_ids"].masked_fill(causal["attention_mask"] == 0, -100)
    classify = dict(
        AutoTokenizer.from_pretrained(tiny_bert_dir)(TEXTS, padding=True, return_tensors="pt")
    )
    classify["labels"] = torch.tensor(LABELS)
    return {"causal_lm": causal, "sequence_classification": classify}


def load_base(task_kind, tiny_llama_dir, tiny_bert_dir, head_seed=0):
    """A fresh base model; the classification head is initialised at random from ``head_seed``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(head_seed)
    if task_kind == "causal_lm":
        return AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert_dir, num_labels=3)


def settings_for(name):
    method = METHODS[name]
    return method.config_class() if method.config_class is not None else None


@torch.no_grad()
def evaluate(model, batch):
    model.eval()
    out = model(**batch)
    return out.logits.detach().clone(), out.loss.item()


def assert_plain(merged, base_class):
    from transformers import PreTrainedModel

    assert isinstance(merged, PreTrainedModel)
    assert type(merged) is base_class, f"merge returned {type(merged).__name__}"
    peft_modules = [n for n, m in merged.named_modules() if type(m).__module__.startswith("peft")]
    assert not peft_modules, f"PEFT modules left after merge: {peft_modules[:3]}"


@pytest.mark.parametrize("task_kind", TASK_KINDS)
@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_lifecycle(name, task_kind, tiny_llama_dir, tiny_bert_dir, batches, tmp_path):
    method, batch = METHODS[name], batches[task_kind]
    base = load_base(task_kind, tiny_llama_dir, tiny_bert_dir)
    base_class = type(base)
    total = sum(p.numel() for p in base.parameters())
    base_logits, _ = evaluate(base, batch)

    # apply
    try:
        model = method.apply(base, settings_for(name), task_kind)
    except UsageError as exc:
        if name in BUILTIN:
            raise
        pytest.skip(f"third-party method {name!r} declines this model: {exc}")
    logits, loss_before = evaluate(model, batch)
    if name in STARTS_AS_BASE:
        torch.testing.assert_close(logits, base_logits, atol=1e-5, rtol=0)

    # forward, backward, optimizer steps on a fixed batch
    parameters = getattr(method, "optimizer_parameters", None)
    parameters = (
        parameters(model) if parameters else [p for p in model.parameters() if p.requires_grad]
    )
    assert parameters, f"{name}: nothing to train"
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trained_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(
        parameters, lr=LEARNING_RATES.get(name, DEFAULT_LR), weight_decay=0.0
    )
    torch.manual_seed(0)
    model.train()
    for _ in range(STEPS):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    trained_logits, loss_after = evaluate(model, batch)
    ratio = LOSS_RATIO.get((name, task_kind), DEFAULT_LOSS_RATIO)
    assert loss_after < ratio * loss_before, f"{name}: loss {loss_before:.4f} -> {loss_after:.4f}"
    params = dict(model.named_parameters())
    for n, before in frozen.items():
        assert torch.equal(params[n], before), f"{name}: frozen {n} changed"
    unmoved = [n for n, before in trained_before.items() if torch.equal(params[n], before)]
    assert not unmoved, f"{name}: trainable tensors that did not train: {unmoved[:5]}"

    # trainable state: small, and it carries the training into a freshly applied model
    state = method.trainable_state(model)
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    if name != "full":
        assert sum(v.numel() for v in state.values()) < 0.5 * total
    other = method.apply(
        load_base(task_kind, tiny_llama_dir, tiny_bert_dir, head_seed=1),
        settings_for(name),
        task_kind,
    )
    method.load_trainable_state(other, state)
    assert torch.equal(evaluate(other, batch)[0], trained_logits)

    # save, then load into a fresh base whose random head differs: exactly the same logits
    (tmp_path / "saved").mkdir()  # as the job does: save() gets an existing, empty folder
    method.save(model, tmp_path / "saved")
    fresh = load_base(task_kind, tiny_llama_dir, tiny_bert_dir, head_seed=1)
    loaded = method.load(fresh, tmp_path / "saved", settings_for(name), task_kind)
    assert torch.equal(evaluate(loaded, batch)[0], trained_logits)

    # merge: a plain transformers model computing the same
    if name in CANNOT_MERGE:
        with pytest.raises(UsageError, match="merge"):
            method.merge(model)
        return
    try:
        merged = method.merge(model)
    except UsageError:
        if name in BUILTIN:
            raise
        pytest.skip(f"third-party method {name!r} refuses to merge")
    assert_plain(merged, base_class)
    torch.testing.assert_close(evaluate(merged, batch)[0], trained_logits, atol=1e-4, rtol=0)


# -- registration -----------------------------------------------------------------------------


def test_builtin_methods_come_from_entry_points():
    assert EXPECTED_BUILTIN <= BUILTIN
    for name in EXPECTED_BUILTIN:
        info = PM.infos[PM.registries.owner("methods", name)]
        assert info.distribution == "tunewright", info.describe()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_satisfies_protocol(name):
    method = METHODS[name]
    assert isinstance(method, tunewright.Method)
    assert method.reference.startswith("https://")
    if method.config_class is not None:
        assert issubclass(method.config_class, tunewright.Section)
        for field_name, field in method.config_class.model_fields.items():
            assert field.description, f"{name}.{field_name} has no help text"


# -- config sections --------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n in METHODS if METHODS[n].config_class is not None))
def test_method_section_defaults_and_unknown_key(name):
    section = METHODS[name].config_class
    assert isinstance(validate_section(section, None, name, "config.yaml"), section)
    with pytest.raises(ConfigError, match=rf"config.yaml: {name}\.no_such_key: unknown key"):
        validate_section(section, {"no_such_key": 1}, name, "config.yaml")


def test_lora_rank_is_spelt_r():
    section = METHODS["lora"].config_class
    with pytest.raises(ConfigError) as info:
        validate_section(section, {"rank": 8}, "lora", "config.yaml")
    message = str(info.value)
    assert message.startswith("config.yaml: lora.rank: unknown key")
    assert "alpha" in message and "target_modules" in message  # says what is allowed


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"r": "eight"}, r"lora\.r: expected an integer"),
        ({"r": 0}, r"lora\.r: .*greater than or equal to 1"),
        ({"dropout": 1.5}, r"lora\.dropout: "),
        ({"bias": "some"}, r"lora\.bias: "),
        ({"target_modules": []}, r"lora\.target_modules: .*at least one"),
        ({"target_modules": "everything"}, r"lora\.target_modules"),
    ],
)
def test_lora_section_rejects_bad_values(data, expected):
    with pytest.raises(ConfigError, match=expected):
        validate_section(METHODS["lora"].config_class, data, "lora", "config.yaml")


@pytest.mark.parametrize(
    "name, data, key",
    [
        ("adapter", {"activation": "swish"}, "adapter.activation"),
        ("adapter", {"layers": "top"}, "adapter.layers"),
        ("freeze", {"train_top_layers": -1}, "freeze.train_top_layers"),
        ("prompt_tuning", {"num_virtual_tokens": 0}, "prompt_tuning.num_virtual_tokens"),
        ("ia3", {"feedforward_modules": 3}, "ia3.feedforward_modules"),
    ],
)
def test_other_sections_name_the_bad_key(name, data, key):
    with pytest.raises(ConfigError, match=rf"config.yaml: {key}"):
        validate_section(METHODS[name].config_class, data, name, "config.yaml")


def test_job_config_validates_the_method_section():
    from tunewright.config import load_config

    registries = PM.registries
    job = {
        "model": "minilm-l6",
        "task": sorted(registries.tasks)[0],
        "data": {"train": "t.jsonl"},
        "method": "lora",
    }
    config = load_config({**job, "lora": {"r": 4}}, registries, source="job.yaml")
    assert config.section("lora").r == 4
    with pytest.raises(ConfigError, match=r"job.yaml: lora.rank: unknown key"):
        load_config({**job, "lora": {"rank": 4}}, registries, source="job.yaml")
    with pytest.raises(ConfigError, match=r"a section for method 'lora', but method is 'adapter'"):
        load_config({**job, "method": "adapter", "lora": {"r": 4}}, registries, source="job.yaml")
