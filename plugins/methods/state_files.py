"""The folder format of methods that PEFT does not provide (``adapter``, ``freeze``).

::

    adapter/
    ├── tunewright_method.json        {"format": 1, "method": "adapter", "task_kind": ...,
    │                                  "settings": {...}, "trainable": [parameter names]}
    └── trainable_state.safetensors   the tensors of ``trainable_state()``

The names differ from PEFT's (``adapter_config.json``) on purpose: a tool that understands PEFT
folders must not mistake this one for a PEFT adapter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tunewright import UsageError

FORMAT_VERSION = 1
CONFIG_FILE = "tunewright_method.json"
WEIGHTS_FILE = "trainable_state.safetensors"


def snapshot(model: nn.Module, names: list[str]) -> dict[str, torch.Tensor]:
    """Detached copies of the named parameters, so that training on does not change them."""
    params = dict(model.named_parameters(remove_duplicate=False))
    return {name: params[name].detach().clone() for name in names}


def load_named(model: nn.Module, state: dict[str, Any], names: list[str], method: str) -> None:
    """Copy ``state`` into the named parameters; the key sets must match exactly."""
    missing, unexpected = sorted(set(names) - set(state)), sorted(set(state) - set(names))
    if missing or unexpected:
        raise UsageError(
            f"method {method!r}: the state does not fit this model (missing: "
            f"{', '.join(missing[:5]) or 'none'}; unexpected: {', '.join(unexpected[:5]) or 'none'}); "
            "was it saved from another model or with other settings?"
        )
    params = dict(model.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name in names:
            value = torch.as_tensor(state[name])
            if value.shape != params[name].shape:
                raise UsageError(
                    f"method {method!r}: {name} has shape {tuple(value.shape)} in the state but "
                    f"{tuple(params[name].shape)} in the model"
                )
            params[name].copy_(value)


def write(path: Path, record: dict, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(
        {k: v.detach().contiguous().cpu() for k, v in state.items()},
        str(path / WEIGHTS_FILE),
        metadata={"format": "pt"},
    )
    (path / CONFIG_FILE).write_text(
        json.dumps({"format": FORMAT_VERSION, **record}, indent=2) + "\n"
    )


def read(path: Path, method: str, task_kind: str) -> tuple[dict, dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_path.is_file() or not weights_path.is_file():
        raise UsageError(
            f"{path}: not a saved {method!r} state (expected {CONFIG_FILE} and {WEIGHTS_FILE})"
        )
    record = json.loads(config_path.read_text())
    if record.get("format") != FORMAT_VERSION:
        raise UsageError(
            f"{config_path}: format {record.get('format')!r} is not supported "
            f"(this tunewright reads format {FORMAT_VERSION})"
        )
    if record.get("method") != method:
        raise UsageError(f"{path}: saved by method {record.get('method')!r}, not {method!r}")
    if record.get("task_kind") != task_kind:
        raise UsageError(
            f"{path}: saved for task kind {record.get('task_kind')!r}, not {task_kind!r}"
        )
    return record, load_file(str(weights_path))
