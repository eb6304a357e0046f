"""The protocols a plugin implements and the small records passed between them.

Protocols rather than base classes: a plugin's object needs the attributes and methods named here,
nothing more, and never imports a private name of ours.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Protocol, runtime_checkable


@dataclass(frozen=True)
class Problem:
    """One thing wrong with an example: ``data/train.jsonl:17: no assistant turn (...)``."""

    location: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.location}: {prefix}{self.message}"


@runtime_checkable
class ModelProvider(Protocol):
    """A pretrained model registered by name (``register_models``)."""

    description: str

    def resolve(self) -> Path:
        """Return a local Hugging Face folder holding config, weights and tokenizer."""


@runtime_checkable
class DatasetFormat(Protocol):
    """Reads one kind of data file (``register_dataset_formats``)."""

    suffixes: tuple[str, ...]

    def read(self, path: Path) -> Iterator[tuple[int, Any]]:
        """Yield ``(line_number, record)``; a record that cannot be parsed is yielded as a
        :class:`tunewright.DataError` so that every broken line can be reported at once."""

    def to_example(self, record: Any) -> dict:
        """Turn a parsed record into an example of the shape its task expects, or raise
        :class:`tunewright.DataError` with what is wrong and what is allowed."""


@runtime_checkable
class Task(Protocol):
    """What is learnt and how it is measured (``register_tasks``)."""

    #: "causal_lm" or "sequence_classification": tells methods and exporters which head it has
    model_kind: str
    #: the metric that early stopping and the parity gate watch by default
    primary_metric: str
    greater_is_better: bool

    def load_tokenizer(self, path: Path | str, trust_remote_code: bool = False) -> Any:
        """Load the tokenizer (with a pad token and, for chat, a chat template)."""

    def label_set(self, examples: list[dict]) -> list[str] | None:
        """The label names the training examples use (``None``: the task has none)."""

    def load_model(self, path: Path | str, labels: list[str] | None, config: Any,
                   tokenizer: Any = None) -> Any:
        """Load the model from a local folder or hub id, shaped for the task (labels...)."""

    def tokenize(self, example: dict, tokenizer: Any, max_length: int,
                 labels: list[str] | None = None) -> dict:
        """Turn an example into model inputs (``input_ids``, ``attention_mask``, ``labels``)."""

    def count_tokens(self, example: dict, tokenizer: Any) -> int:
        """How many tokens the example takes, for validation and estimates."""

    def collate(self, features: list[dict], tokenizer: Any) -> dict:
        """Pad a list of tokenized examples into a batch of tensors (dynamic padding)."""

    def metrics(self, model: Any, batches: Iterable[dict]) -> dict[str, float]:
        """Evaluate ``model`` on batches; return the task's figures (``loss`` always)."""


@runtime_checkable
class Method(Protocol):
    """A way to fine-tune: which parameters train and how they fold back (``register_methods``).

    ``config_class`` is a pydantic model for the method's own config section (or ``None``).
    """

    config_class: Any
    #: a link to the paper or reference, shown by ``tunewright plugins``
    reference: str

    def apply(self, model: Any, settings: Any, task_kind: str) -> Any:
        """Return the model ready to train: frozen where it should be, new layers added."""

    def trainable_state(self, model: Any) -> dict[str, Any]:
        """The tensors that training changed, small enough to send between federated sites."""

    def load_trainable_state(self, model: Any, state: dict[str, Any]) -> None:
        """Put a state from :meth:`trainable_state` back into an applied model."""

    def save(self, model: Any, path: Path) -> None:
        """Write the trainable state to a folder (PEFT format where PEFT is used)."""

    def load(self, model: Any, path: Path, settings: Any, task_kind: str) -> Any:
        """Apply the method to a fresh base ``model`` and load what :meth:`save` wrote."""

    def merge(self, model: Any) -> Any:
        """Return a plain ``transformers`` model with the method folded in, for export."""


@dataclass
class TrainResult:
    """What a runner hands back to the job."""

    run_dir: Path
    global_step: int
    metrics: dict[str, float] = field(default_factory=dict)
    train_tokens: int = 0
    train_seconds: float = 0.0
