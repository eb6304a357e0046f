"""``freeze``: transfer learning by training only the top of the model, optionally unfreezing it
gradually (ULMFiT, https://arxiv.org/abs/1801.06146).

::

    head (classifier / lm_head)        trains (see train_head)
    after the stack (final norm, BERT's pooler)  trains
    block n-1  ┐
    ...        ├ train_top_layers = N   trains (with gradual_unfreeze: from epoch k on, for the
    block n-N  ┘                         k-th block from the top)
    block n-N-1 ... block 0            frozen
    embeddings                         frozen

Nothing is added to the model, so :meth:`FreezeMethod.merge` returns the model itself.

What a trainer must know, beyond the ``Method`` protocol (looked up with ``getattr``, since other
methods do not have them):

- :meth:`FreezeMethod.apply` leaves trainable every parameter that trains at *some* epoch, so an
  optimizer built from ``requires_grad`` right after ``apply`` (as transformers' Trainer does) holds
  them all, and casting the frozen weights to bf16 leaves them alone.
- ``on_epoch(model, epoch) -> None``: with ``gradual_unfreeze``, call it before the first step of
  every epoch (``epoch`` counts from 0; ``int(state.epoch)`` after a resume). It freezes the blocks
  not yet due, from the epoch number alone, so calling it twice is harmless. A frozen parameter
  has no gradient, and torch optimizers skip a parameter without one (no update, no weight decay)
  until it is unfrozen. Without ``gradual_unfreeze`` it changes nothing. A trainer that never
  calls it trains all ``train_top_layers`` blocks from the start.
- ``optimizer_parameters(model) -> list[Parameter]``: every parameter that trains at some epoch,
  for a training loop that builds its optimizer after calling ``on_epoch``.
"""

from __future__ import annotations

from pydantic import Field

from tunewright import ConfigError, Section, UsageError, hookimpl, kinds

from . import state_files
from .model_parts import (
    TEXT_AND_IMAGE_KINDS,
    after_stack_names,
    block_stack,
    check_task_kind,
    head_is_tied,
    head_names,
    keep_batchnorm_statistics,
    parameter_names_under,
)

REFERENCE = "https://arxiv.org/abs/1801.06146"


class FreezeSettings(Section):
    """Freeze all but the top of the model; ULMFiT's gradual unfreezing
    (https://arxiv.org/abs/1801.06146)."""

    train_top_layers: int = Field(
        2, ge=0, description="how many of the top transformer blocks train (0: only the head)"
    )
    gradual_unfreeze: bool = Field(
        False,
        description="start with the head only and unfreeze one more block from the top per epoch, "
        "down to train_top_layers blocks; the trainer calls on_epoch",
    )
    train_head: bool | None = Field(
        None,
        description="train the task head; default: yes, except a causal LM head tied to the input "
        "embeddings (SmolLM2's), which is the whole vocabulary table",
    )


class FreezeMethod:
    name = "freeze"
    config_class = FreezeSettings
    reference = REFERENCE
    task_kinds = TEXT_AND_IMAGE_KINDS

    def apply(self, model, settings, task_kind):
        check_task_kind(self.name, task_kind, self.task_kinds)
        settings = settings if settings is not None else FreezeSettings()
        stack_name, blocks = block_stack(model)
        count, top = len(blocks), settings.train_top_layers
        if top > count:
            raise ConfigError(
                f"freeze.train_top_layers: {top}, but the model has {count} blocks "
                f"(allowed: 0..{count})"
            )
        train_head = settings.train_head
        if train_head is None:
            train_head = task_kind in kinds.CLASSIFICATION_KINDS or not head_is_tied(model)
        always = (head_names(model) if train_head else []) + after_stack_names(model)
        layers = [f"{stack_name}.{i}" for i in reversed(range(count - top, count))]  # top first
        trainable = parameter_names_under(model, always + layers)
        if not trainable:
            raise ConfigError(
                "freeze: nothing would train (train_top_layers is 0, train_head is "
                "false and the model has nothing after its blocks); raise "
                "train_top_layers or set train_head: true"
            )
        model.tunewright_method = {
            "method": self.name,
            "task_kind": task_kind,
            "settings": settings.model_dump(mode="json"),
            "trainable": trainable,
            "always": always,
            "layers": layers,
        }
        keep_batchnorm_statistics(model)  # the saved state holds parameters only (see model_parts)
        # every parameter that trains at some epoch, until on_epoch() narrows it (see above)
        model.requires_grad_(False)
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in trainable:
            params[name].requires_grad_(True)
        return model

    def _record(self, model) -> dict:
        record = getattr(model, "tunewright_method", None)
        if not record or record.get("method") != self.name:
            raise UsageError("freeze: expects the model that apply() returned")
        return record

    # -- beyond the protocol: what a trainer calls (see the module docstring) -----------------

    def optimizer_parameters(self, model):
        params = dict(model.named_parameters(remove_duplicate=False))
        return [params[name] for name in self._record(model)["trainable"]]

    def on_epoch(self, model, epoch: int) -> None:
        record = self._record(model)
        layers = record["layers"]
        unfrozen = (
            min(epoch, len(layers)) if record["settings"]["gradual_unfreeze"] else len(layers)
        )
        model.requires_grad_(False)
        params = dict(model.named_parameters(remove_duplicate=False))
        for name in parameter_names_under(model, record["always"] + layers[:unfrozen]):
            params[name].requires_grad_(True)

    # -- the Method protocol ------------------------------------------------------------------

    def trainable_state(self, model):
        """Every parameter that trains at some epoch, so the keys never change between rounds."""
        return state_files.snapshot(model, self._record(model)["trainable"])

    def load_trainable_state(self, model, state):
        state_files.load_named(model, state, self._record(model)["trainable"], self.name)

    def save(self, model, path):
        state_files.write(path, self._record(model), self.trainable_state(model))

    def load(self, model, path, settings, task_kind):
        """Apply the settings saved at ``path`` (they win over ``settings``) and load the state.
        As after :meth:`apply`, every block that trains at some epoch is trainable; call
        ``on_epoch`` for the epoch to resume at."""
        check_task_kind(self.name, task_kind, self.task_kinds)
        record, state = state_files.read(path, self.name, task_kind)
        model = self.apply(model, FreezeSettings.model_validate(record["settings"]), task_kind)
        self.load_trainable_state(model, state)
        return model

    def merge(self, model):
        self._record(model)
        return model


@hookimpl
def register_methods(register):
    register("freeze", FreezeMethod())
