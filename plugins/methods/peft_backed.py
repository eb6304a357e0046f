"""What the PEFT-backed methods (``lora``, ``dora``, ``ia3``, ``prompt_tuning``) share.

Each method builds a ``peft.PeftConfig`` from its settings; everything else is PEFT's:
``get_peft_model`` wraps the model, ``save_pretrained`` writes the adapter folder
(``adapter_config.json`` + ``adapter_model.safetensors``), ``PeftModel.from_pretrained`` reads it back
and ``merge_and_unload`` folds the update into the base weights.

For ``image_text_to_text`` (lora and dora only) the adapters go into the language model's blocks,
never into the vision tower, and the projector between them (:func:`model_parts.projector_names`)
is trained in full through ``modules_to_save``; there is no PEFT task type for it (``None``).

For ``sequence_classification`` the head (``classifier``, ``score``: found with
:func:`model_parts.head_names`) goes into PEFT's ``modules_to_save``: it is trained in full, saved
with the adapter and swapped in by ``merge_and_unload``. A freshly initialised head would otherwise
stay random.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tunewright import ConfigError, UsageError, kinds

from .model_parts import (
    block_stack,
    check_task_kind,
    head_names,
    keep_batchnorm_statistics,
    language_model,
    linear_suffixes,
    model_summary,
    pointwise_convolutions,
    projector_names,
)

#: PEFT's task type per task kind; a kind without one (image classification, image-text) wraps
#: with ``task_type=None`` and puts what trains in full in ``modules_to_save`` itself
PEFT_TASK_TYPES = {kinds.CAUSAL_LM: "CAUSAL_LM", kinds.SEQUENCE_CLASSIFICATION: "SEQ_CLS"}
PEFT_ADDS_FOR_SEQ_CLS = ("classifier", "score")


class PeftMethod:
    """A method whose surgery, state and folder format are PEFT's. Subclasses set ``name``,
    ``config_class``, ``reference``, ``peft_type`` and implement :meth:`peft_config`."""

    name: str
    config_class: Any
    reference: str
    #: PEFT's name for the tuner, checked when a folder is loaded ("LORA", "IA3"...)
    peft_type: str
    #: the task kinds it tunes (``Method.task_kinds``): those with a PEFT task type
    task_kinds = tuple(PEFT_TASK_TYPES)

    # -- what a subclass provides -------------------------------------------------------------

    def peft_config(self, model: Any, settings: Any, task_kind: str) -> Any:
        raise NotImplementedError(
            f"{type(self).__name__}: each PEFT-backed method subclass builds its own PEFT config"
        )

    def check_saved(self, saved: Any, path: Path) -> None:
        """Refuse a folder that PEFT can read but that another method wrote."""

    # -- the Method protocol ------------------------------------------------------------------

    def apply(self, model: Any, settings: Any, task_kind: str) -> Any:
        from peft import PeftModel, get_peft_model

        check_task_kind(self.name, task_kind, self.task_kinds)
        if isinstance(model, PeftModel):
            raise UsageError(
                f"method {self.name!r}: the model is wrapped by PEFT already; "
                "apply a method to a plain base model once"
            )
        settings = settings if settings is not None else self.config_class()
        config = self.peft_config(model, settings, task_kind)
        try:
            wrapped = get_peft_model(model, config)
        except ValueError as exc:  # PEFT's "target modules not found" and the like
            raise ConfigError(f"{self.name}: {exc}") from exc
        keep_batchnorm_statistics(wrapped)  # the adapter does not carry them (see model_parts)
        return wrapped

    def trainable_state(self, model: Any) -> dict[str, Any]:
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}

    def load_trainable_state(self, model: Any, state: dict[str, Any]) -> None:
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        expected = set(get_peft_model_state_dict(model))
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise UsageError(
                f"method {self.name!r}: the state does not fit this model (missing: "
                f"{', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'})"
            )
        set_peft_model_state_dict(model, state)

    def save(self, model: Any, path: Path) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)
        model.save_pretrained(str(path))

    def load(self, model: Any, path: Path, settings: Any, task_kind: str) -> Any:
        """Wrap a fresh base ``model`` with the adapter saved at ``path``, ready to train on.

        The folder's ``adapter_config.json`` wins over ``settings``: a folder always loads as it
        was trained."""
        from peft import PeftConfig

        check_task_kind(self.name, task_kind, self.task_kinds)
        path = Path(path)
        if not (path / "adapter_config.json").is_file():
            raise UsageError(f"{path}: not a PEFT adapter folder (no adapter_config.json)")
        saved = PeftConfig.from_pretrained(str(path))
        found = getattr(saved.peft_type, "value", saved.peft_type)
        if found != self.peft_type:
            raise UsageError(
                f"{path}: holds a PEFT {found} adapter, not one of method {self.name!r}"
            )
        if saved.task_type != PEFT_TASK_TYPES.get(task_kind):
            raise UsageError(
                f"{path}: the adapter was trained for PEFT task {saved.task_type}, "
                f"not {task_kind!r}"
            )
        self.check_saved(saved, path)
        return self.load_folder(model, path, saved)

    def load_folder(self, model: Any, path: Path, saved: Any) -> Any:
        from peft import PeftModel

        wrapped = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        keep_batchnorm_statistics(wrapped)
        return wrapped

    def merge(self, model: Any) -> Any:
        """Fold the adapter into the base weights and return the plain transformers model.

        Works in place: the PEFT wrapper passed in must not be used afterwards."""
        from peft import PeftModel

        if not isinstance(model, PeftModel):
            raise UsageError(f"method {self.name!r}: merge expects the model that apply() returned")
        return model.merge_and_unload()

    # -- helpers for subclasses ---------------------------------------------------------------

    def modules_to_save(self, model: Any, extra: list[str], task_kind: str) -> list[str] | None:
        names = list(extra)
        if task_kind == kinds.IMAGE_TEXT_TO_TEXT:
            names += [name for name in projector_names(model) if name not in names]
        if task_kind in kinds.CLASSIFICATION_KINDS:
            # PEFT adds "classifier" and "score" for SEQ_CLS itself; add the heads named otherwise
            added = PEFT_ADDS_FOR_SEQ_CLS if PEFT_TASK_TYPES.get(task_kind) == "SEQ_CLS" else ()
            names += [name for name in head_names(model) if name not in names and name not in added]
        return names or None

    def resolve_targets(self, model: Any, wanted: Any, key: str) -> list[str]:
        """``auto`` -> every linear layer inside the blocks, and every 1x1 convolution there (by its
        qualified name: a CNN's depthwise convolutions share the suffix); a list -> checked against
        the model."""
        available = linear_suffixes(model) + pointwise_convolutions(model)
        if wanted == "auto":
            if not available:
                raise ConfigError(
                    f"{key}: auto found no linear layers in the blocks of "
                    f"{model_summary(model)}; list the modules to adapt"
                )
            return available
        names = [name for name, _ in model.named_modules()]
        unknown = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
        if unknown:
            raise ConfigError(
                f"{key}: {', '.join(map(repr, unknown))} names no module of {model_summary(model)} "
                f"(its linear layers in the blocks: {', '.join(available) or 'none'}; or use auto)"
            )
        return list(wanted)

    def target_modules(self, model: Any, wanted: Any, key: str, task_kind: str) -> list[str] | str:
        """:meth:`resolve_targets`, and for an image-text model a regular expression that keeps
        the adapters inside its language model's blocks (a CLIP tower has ``q_proj`` layers too)."""
        if task_kind != kinds.IMAGE_TEXT_TO_TEXT:
            return self.resolve_targets(model, wanted, key)
        decoder, prefix = language_model(model)
        names = self.resolve_targets(decoder, wanted, key)
        stack_name, _ = block_stack(decoder)
        stack = f"{prefix}.{stack_name}" if prefix else stack_name
        return rf"{re.escape(stack)}\.\d+\.(?:.*\.)?(?:{'|'.join(map(re.escape, names))})"
