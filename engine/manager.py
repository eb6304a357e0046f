"""The plugin manager: hook specs, entry points, registries.

``get_plugin_manager()`` is a factory, not a global: every call builds a fresh manager, loads the
entry-point group ``tunewright`` (built-ins included, since they are ordinary entry points of the
``tunewright`` distribution) and checks that every hook implementation matches a spec.

Two environment variables steer what loads, as ``LLM_LOAD_PLUGINS`` and
``PYTEST_DISABLE_PLUGIN_AUTOLOAD`` do for llm and pytest:

``TUNEWRIGHT_LOAD_PLUGINS``
    A comma-separated allow-list of third-party distribution or entry-point names. Built-ins
    always load. An empty value loads no third-party plugin.
``TUNEWRIGHT_DISABLE_PLUGIN_AUTOLOAD``
    Any non-empty value loads no third-party plugin at all.
"""

from __future__ import annotations

import difflib
import importlib.metadata
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .compat import adapt
from .errors import PluginError

GROUP = "tunewright"
BUILTIN_DISTRIBUTION = "tunewright"
ALLOW_ENV = "TUNEWRIGHT_LOAD_PLUGINS"
DISABLE_ENV = "TUNEWRIGHT_DISABLE_PLUGIN_AUTOLOAD"

NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_\-]*$")


def _protocols() -> dict[str, type]:
    from .types import DatasetFormat, Method, ModelProvider, Task

    return {
        "models": ModelProvider,
        "dataset_formats": DatasetFormat,
        "tasks": Task,
        "methods": Method,
    }


# kind -> the registration hook that fills it
REGISTRY_HOOKS = {
    "models": "register_models",
    "dataset_formats": "register_dataset_formats",
    "tasks": "register_tasks",
    "methods": "register_methods",
    "config_sections": "register_config_sections",
    "exporters": "register_exporters",
    "quantizers": "register_quantizers",
    "edge_runtimes": "register_edge_runtimes",
    "trackers": "register_trackers",
    "runners": "register_runners",
    "graders": "register_graders",
}


@dataclass
class PluginInfo:
    """What ``tunewright plugins`` shows of one plugin."""

    name: str
    distribution: str | None
    version: str | None
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    def describe(self) -> str:
        if self.distribution:
            return f"plugin {self.name!r} (distribution {self.distribution} {self.version})"
        return f"plugin {self.name!r}"


@dataclass
class Registered:
    name: str
    obj: Any
    plugin: str


class Registries:
    """Every name registered by every plugin, by kind: ``registries.methods["lora"]``."""

    def __init__(self, infos: dict[str, PluginInfo]):
        self._infos = infos
        self._entries: dict[str, dict[str, Registered]] = {kind: {} for kind in REGISTRY_HOOKS}

    def add(self, kind: str, name: str, obj: Any, plugin: str) -> None:
        info = self._infos.get(plugin) or PluginInfo(plugin, None, None)
        if not isinstance(name, str) or not NAME_PATTERN.match(name):
            raise PluginError(
                f"{info.describe()} registered {kind[:-1].replace('_', ' ')} {name!r}: a name "
                "must be lowercase letters, digits, '-' or '_', starting with a letter"
            )
        entries = self._entries[kind]
        if name in entries:
            other = self._infos.get(entries[name].plugin) or PluginInfo(
                entries[name].plugin, None, None
            )
            raise PluginError(
                f"{info.describe()} registered {kind[:-1].replace('_', ' ')} {name!r}, which "
                f"{other.describe()} registered already; uninstall one of them or limit "
                f"plugins with {ALLOW_ENV}"
            )
        obj = adapt(kind, name, obj, info.describe())  # an older release's form, with a warning
        protocol = _protocols().get(kind)
        if protocol is not None and not isinstance(obj, protocol):
            missing = [member for member in _required(protocol) if not hasattr(obj, member)]
            raise PluginError(
                f"{info.describe()} registered {kind[:-1].replace('_', ' ')} {name!r}, which lacks "
                f"what a tunewright.{protocol.__name__} has: {', '.join(missing)} (see the "
                f"{protocol.__name__} protocol in tunewright.types)"
            )
        entries[name] = Registered(name, obj, plugin)
        info.registered.setdefault(kind, []).append(name)

    def kind(self, kind: str) -> dict[str, Any]:
        return {name: entry.obj for name, entry in self._entries[kind].items()}

    def owner(self, kind: str, name: str) -> str:
        return self._entries[kind][name].plugin

    def get(self, kind: str, name: str, *, key: str | None = None) -> Any:
        """The object registered as ``name``, or a ``ConfigError`` that lists what is."""
        from .errors import ConfigError

        problem = self.unknown(kind, name, key=key)
        if problem is not None:
            raise ConfigError(problem)
        return self._entries[kind][name].obj

    def unknown(self, kind: str, name: str, *, key: str | None = None) -> str | None:
        """``None`` when ``name`` is registered, else the sentence that says so: ``key: unknown
        runner 'x'; did you mean 'y'? (registered: local, ...)``."""
        entries = self._entries[kind]
        if name in entries:
            return None
        what = kind[:-1].replace("_", " ")
        known = sorted(entries)
        near = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        where = f"{key}: " if key else ""
        return f"{where}unknown {what} {name!r}{hint} (registered: {', '.join(known) or 'none'})"

    def __getattr__(self, kind: str) -> dict[str, Any]:
        if kind.startswith("_") or kind not in REGISTRY_HOOKS:
            raise AttributeError(kind)
        return self.kind(kind)


class PluginManager(pluggy.PluginManager):
    """pluggy's manager plus what tunewright knows of each plugin and the filled registries."""

    def __init__(self) -> None:
        super().__init__(GROUP)
        self.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        #: built-in plugins skipped because a package of an extra is missing: name -> reason
        self.unavailable: dict[str, str] = {}
        self._registries: Registries | None = None

    def register_plugin(
        self, plugin: Any, name: str, distribution: str | None = None, version: str | None = None
    ) -> None:
        info = PluginInfo(name, distribution, version)
        if self.has_plugin(name):
            raise PluginError(
                f"{info.describe()} uses the name {name!r}, which {self.infos[name].describe()} uses already"
            )
        try:
            self.register(plugin, name=name)
        except ValueError as exc:  # the same object registered twice under two names
            raise PluginError(
                f"{info.describe()} could not be registered: it is registered already"
            ) from exc
        info.hooks = sorted(impl_name for impl_name in _hook_names(self, plugin))
        self.infos[name] = info

    @property
    def registries(self) -> Registries:
        """Registries filled on first use by calling every registration hook once."""
        if self._registries is None:
            registries = Registries(self.infos)
            for kind, hook_name in REGISTRY_HOOKS.items():
                hook = getattr(self.hook, hook_name)
                # Each plugin's implementation is called on its own, through pluggy (which passes
                # only the arguments it names), so that `register` knows who is calling: a bad or
                # duplicate name is reported against the plugin that registered it.
                for impl in reversed(hook.get_hookimpls()):
                    others = [p for p in self.get_plugins() if p is not impl.plugin]
                    caller = self.subset_hook_caller(hook_name, remove_plugins=others)
                    info = self.infos.get(impl.plugin_name) or PluginInfo(
                        impl.plugin_name, None, None
                    )
                    try:
                        caller(register=_bound_register(registries, kind, impl.plugin_name))
                    except PluginError:
                        raise
                    except Exception as exc:  # a plugin's bug, reported against the plugin
                        raise PluginError(
                            f"{info.describe()} failed in {hook_name}: {type(exc).__name__}: {exc}"
                        ) from exc
            self._registries = registries
        return self._registries


def _required(protocol: type) -> list[str]:
    names = set(getattr(protocol, "__annotations__", {}))
    names |= {n for n, v in vars(protocol).items() if callable(v) and not n.startswith("_")}
    return sorted(names)


def _bound_register(registries: Registries, kind: str, plugin: str) -> Callable[..., None]:
    def register(name: str, obj: Any) -> None:
        registries.add(kind, name, obj, plugin)

    return register


def _hook_names(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    return [caller.name for caller in pm.get_hookcallers(plugin) or []]


def _allowed(env: dict[str, str]) -> set[str] | None:
    if env.get(DISABLE_ENV):
        return set()
    if ALLOW_ENV in env:
        return {item.strip() for item in env[ALLOW_ENV].split(",") if item.strip()}
    return None


def _entry_points() -> list[importlib.metadata.EntryPoint]:
    return list(importlib.metadata.entry_points(group=GROUP))


def get_plugin_manager(
    *,
    load_entrypoints: bool = True,
    plugins: Sequence[tuple[str, Any]] = (),
    env: dict[str, str] | None = None,
) -> PluginManager:
    """Build a fresh plugin manager.

    Loads the built-in plugins and (unless disabled) third-party ones from the entry-point
    group, then ``plugins`` given here as ``(name, object)`` pairs (for tests and embedding),
    and calls ``check_pending()`` so that an implementation of a hook that does not exist fails.
    Raises :class:`tunewright.PluginError` naming the plugin and its distribution.
    """
    env = dict(os.environ) if env is None else env
    pm = PluginManager()
    allowed = _allowed(env)
    seen_builtin = False
    if load_entrypoints:
        for ep in _entry_points():
            dist = ep.dist.name if ep.dist is not None else None
            version = ep.dist.version if ep.dist is not None else None
            builtin = _normalise(dist) == BUILTIN_DISTRIBUTION
            seen_builtin |= builtin
            if not builtin and allowed is not None and not ({ep.name, dist or ""} & allowed):
                continue
            info = PluginInfo(ep.name, dist, version)
            try:
                plugin = ep.load()
            except ModuleNotFoundError as exc:
                if not builtin:
                    raise PluginError(
                        f"{info.describe()} failed to import ({ep.value}): {type(exc).__name__}: {exc}"
                    ) from exc
                # A built-in whose extra is not installed (a device with the runtime alone has no
                # torch): listed as unavailable, so that what is installed still works.
                pm.unavailable[ep.name] = f"needs {exc.name} (pip install 'tunewright[train,edge]')"
                continue
            except Exception as exc:
                raise PluginError(
                    f"{info.describe()} failed to import ({ep.value}): {type(exc).__name__}: {exc}"
                ) from exc
            pm.register_plugin(plugin, ep.name, dist, version)
        if not seen_builtin:
            raise PluginError(
                "the built-in plugins were not found in the entry-point group 'tunewright': "
                "install tunewright (pip install -e .) rather than running it from the checkout"
            )
    for name, plugin in plugins:
        pm.register_plugin(plugin, name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        culprit = pm.get_name(exc.plugin) if exc.plugin is not None else None
        known_info = pm.infos.get(culprit) if culprit else None
        unknown = [c.name for c in pm.get_hookcallers(exc.plugin) or [] if not c.has_spec()]
        known = [
            c.name
            for c in pm.hook.__dict__.values()
            if isinstance(c, pluggy.HookCaller) and c.has_spec()
        ]
        hints = []
        for hook_name in unknown:
            near = difflib.get_close_matches(hook_name, known, n=1)
            hints.append(f"{hook_name!r}" + (f" (did you mean {near[0]!r}?)" if near else ""))
        raise PluginError(
            f"{known_info.describe() if known_info else 'a plugin'} implements a hook that does not exist: "
            f"{', '.join(hints) or exc}"
        ) from exc
    return pm


def _normalise(dist: str | None) -> str | None:
    return re.sub(r"[-_.]+", "-", dist).lower() if dist else dist


def plugin_summary(pm: PluginManager) -> list[dict]:
    """Every plugin with its distribution, hooks and registered names (``tunewright plugins``).

    Built-ins skipped for a missing extra are listed with ``unavailable`` set to the reason.
    """
    _ = pm.registries  # filling them fills PluginInfo.registered
    return [
        {
            "name": info.name,
            "distribution": info.distribution,
            "version": info.version,
            "builtin": info.builtin,
            "hooks": info.hooks,
            "registered": info.registered,
        }
        for info in sorted(pm.infos.values(), key=lambda i: (not i.builtin, i.name))
    ] + [
        {
            "name": name,
            "distribution": BUILTIN_DISTRIBUTION,
            "version": None,
            "builtin": True,
            "hooks": [],
            "registered": {},
            "unavailable": reason,
        }
        for name, reason in sorted(pm.unavailable.items())
    ]


__all__ = ["get_plugin_manager", "PluginManager", "PluginInfo", "plugin_summary", "GROUP"]
