"""Where a config's ``model:`` points: a registered name, a local folder or a Hugging Face id."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import ConfigError


def cache_dir() -> Path:
    """Where converted models are kept: ``$TUNEWRIGHT_CACHE``, else ``$XDG_CACHE_HOME/tunewright``."""
    if os.environ.get("TUNEWRIGHT_CACHE"):
        return Path(os.environ["TUNEWRIGHT_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tunewright"


@contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success rename it to ``target``.

    A crash or error leaves no folder at ``target`` (only a ``.tmp-`` one that is cleaned up), so a
    half-written checkpoint, cache entry or bundle never looks whole.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield staging
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def resolve_provider(provider, models: dict) -> Path:
    """``provider.resolve()``, handing it ``models`` (the registered model providers, by name) when
    its ``resolve`` names that parameter: a provider that builds on another registered model
    looks it up there rather than in a plugin manager of its own."""
    import inspect

    try:
        takes_models = "models" in inspect.signature(provider.resolve).parameters
    except (TypeError, ValueError):
        takes_models = False
    return Path(provider.resolve(models=models) if takes_models else provider.resolve())


def resolve_model(name: str, registries, *, key: str = "model") -> tuple[Path | str, str | None]:
    """Return ``(path_or_hub_id, registered_name)`` for a config's ``model:``."""
    providers = registries.kind("models")
    if name in providers:
        return Path(resolve_provider(providers[name], providers)), name
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"{key}: {name!r} is a folder without config.json (expected a Hugging Face model folder)"
            )
        return path.resolve(), None
    if name.count("/") == 1 and not name.startswith((".", "/")):
        return name, None  # a hub id; loading it needs network access
    raise ConfigError(
        f"{key}: {name!r} is neither a registered model ({', '.join(sorted(providers)) or 'none'}), "
        "a local folder, nor a Hugging Face id (owner/name)"
    )
