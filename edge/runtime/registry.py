"""Which predictor opens a bundle: the ``edge_runtimes`` registry, filled by ``register_edge_runtimes``.

A bundle's manifest names its ``runtime`` and ``task_kind``; the predictor registered for that pair
opens it. Built-in predictors are registered by built-in plugins, as any plugin's would be: text
classification, image classification and generation by ``edge-runtimes``
(``tunewright.plugins.edge.runtimes``), image+text generation by ``edge-image-text``, the plugin
that exports those bundles. On a device that has only ``tunewright[runtime]``, the built-in
plugins that need torch are skipped (listed as unavailable); these load without it.

Looking a predictor up without a plugin manager in hand (``python -m tunewright.edge.runtime``)
would import every plugin, and with them torch where it is installed: seconds and hundreds of MiB
that a bundle does not need. So when no third-party plugin is installed at all (the entry-point
group holds only tunewright's own), a plugin manager of the built-in plugins named in
:data:`BUILTIN_RUNTIME_PLUGINS` alone answers (the full one would give the same answer: no other
built-in plugin registers a predictor, which a test checks). Otherwise every installed plugin
decides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .bundle import BundleError, open_bundle
from .protocol import Predictor

#: registry kind (``pm.registries.edge_runtimes``) and the hook that fills it
KIND = "edge_runtimes"
ENTRY_POINT_GROUP = "tunewright"
BUILTIN_DISTRIBUTION = "tunewright"
#: the built-in plugins (entry-point names) that implement ``register_edge_runtimes``; none needs torch
BUILTIN_RUNTIME_PLUGINS = ("edge-runtimes", "edge-image-text")


def builtin_predictors() -> dict[str, type]:
    """The predictors the built-in ``edge-runtimes`` plugin registers, by name (image+text
    generation comes with the ``edge-image-text`` plugin)."""
    from .predictors import GenAIGenerator, Generator, ImageClassifier, TextClassifier

    return {
        "text-classifier": TextClassifier,
        "image-classifier": ImageClassifier,
        "generator": Generator,
        "genai-generator": GenAIGenerator,
    }


def _serves(cls: Any, runtime: str, task_kind: str) -> bool:
    return getattr(cls, "runtime", None) == runtime and getattr(cls, "task_kind", None) == task_kind


def _is_builtin(ep) -> bool:
    import re

    dist = ep.dist.name if ep.dist is not None else ""
    return re.sub(r"[-_.]+", "-", dist or "").lower() == BUILTIN_DISTRIBUTION


def _runtime_plugin_manager():
    """A plugin manager of the built-in runtime plugins alone, or ``None`` when a third-party
    plugin is installed (then every plugin must have its say)."""
    import importlib.metadata

    from tunewright import get_plugin_manager

    entry_points = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
    if not all(_is_builtin(ep) for ep in entry_points):
        return None
    plugins = []
    for ep in entry_points:
        if ep.name not in BUILTIN_RUNTIME_PLUGINS:
            continue
        try:
            plugins.append((ep.name, ep.load()))
        except (
            ModuleNotFoundError
        ):  # its extra is not installed (pillow...): as the full manager skips it
            continue
    return get_plugin_manager(load_entrypoints=False, plugins=plugins)


def _known(entries: dict[str, Any]) -> str:
    pairs = sorted(
        {f"{getattr(c, 'runtime', '?')}/{getattr(c, 'task_kind', '?')}" for c in entries.values()}
    )
    return ", ".join(pairs) or "none"


def find_predictor(runtime: str, task_kind: str, *, pm: Any = None) -> type:
    """The predictor class registered for ``runtime`` and ``task_kind``.

    With ``pm`` (a plugin manager), its ``edge_runtimes`` registry decides: a third-party predictor
    wins over a built-in one for the same pair; two third-party ones are an error. Raises
    :class:`BundleError` (exit 2) when none serves the pair, listing those that are registered.
    """
    if pm is None:
        pm = _runtime_plugin_manager()
        if pm is None:
            from tunewright import get_plugin_manager

            pm = get_plugin_manager()
    registries = pm.registries
    entries = registries.kind(KIND)
    matches = [name for name, cls in entries.items() if _serves(cls, runtime, task_kind)]
    if not matches:
        raise BundleError(
            f"no edge runtime registered for runtime {runtime!r} and task kind {task_kind!r} "
            f"(registered: {_known(entries)}); install the plugin that made this bundle"
        )
    infos = getattr(pm, "infos", {})

    def builtin(name: str) -> bool:
        info = infos.get(registries.owner(KIND, name))
        return bool(info and info.builtin)

    preferred = [name for name in matches if not builtin(name)] or matches
    if len(preferred) > 1:
        owners = ", ".join(
            f"{name!r} ({registries.owner(KIND, name)})" for name in sorted(preferred)
        )
        raise BundleError(
            f"several edge runtimes serve runtime {runtime!r} and task kind {task_kind!r}: "
            f"{owners}; uninstall one or limit plugins with TUNEWRIGHT_LOAD_PLUGINS"
        )
    return entries[preferred[0]]


def predictor_for(
    folder: str | Path, manifest: dict, *, threads: int | None = None, pm: Any = None
):
    """Open the bundle in ``folder`` (its files already checked) with the predictor registered for
    its manifest's runtime and task kind."""
    cls = find_predictor(str(manifest.get("runtime")), str(manifest.get("task_kind")), pm=pm)
    return cls(Path(folder), manifest, threads=threads)


def load_bundle(
    folder: str | Path, *, verify: bool = True, threads: int | None = None, pm: Any = None
) -> Predictor:
    """Open a bundle and return its predictor. Raises :class:`BundleError` for a changed bundle,
    one of a newer format, or one whose runtime and task kind no registered predictor serves.
    ``pm``: the plugin manager whose ``edge_runtimes`` decide (default: the installed plugins)."""
    manifest = open_bundle(folder, verify=verify)
    return predictor_for(Path(folder), manifest, threads=threads, pm=pm)


__all__ = [
    "load_bundle",
    "find_predictor",
    "predictor_for",
    "builtin_predictors",
    "KIND",
    "BUILTIN_RUNTIME_PLUGINS",
]
