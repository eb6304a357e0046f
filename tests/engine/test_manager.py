"""The plugin host: entry points, allow-list, and the errors a bad plugin gets."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

from tunewright import PluginError, get_plugin_manager, hookimpl
from tunewright.manager import ALLOW_ENV, DISABLE_ENV, plugin_summary


def install_fake_distribution(
    root: Path, dist: str, module: str, source: str, entry: str | None = None
) -> None:
    """Write a module and a .dist-info with an entry point into ``root`` (put on sys.path)."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[tunewright]\n{entry or module} = {module}\n")


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in list(sys.modules):
        if name.startswith("fake_"):
            del sys.modules[name]


def test_builtins_load_through_entry_points():
    summary = {p["name"]: p for p in plugin_summary(get_plugin_manager(env={}))}
    assert summary["tasks"]["distribution"] == "tunewright"
    assert summary["tasks"]["builtin"]
    assert set(summary["tasks"]["registered"]["tasks"]) >= {"chat", "classification"}
    assert "register_models" in summary["models"]["hooks"]


def test_each_call_builds_a_fresh_manager():
    """What one manager is given (a plugin, the names it registers) is not in the next one: tests
    and embedders each get their own."""
    from tunewright.plugins.tasks import ChatTask

    class Extra:
        @hookimpl
        def register_tasks(self, register):
            register("extra-chat", ChatTask())

    first = get_plugin_manager(env={}, plugins=[("extra", Extra())])
    second = get_plugin_manager(env={})
    assert "extra-chat" in first.registries.tasks and first.get_plugin("extra") is not None
    assert "extra-chat" not in second.registries.tasks and second.get_plugin("extra") is None
    assert "chat" in second.registries.tasks  # the built-ins, loaded again


def test_third_party_plugin_is_loaded_and_listed(site):
    install_fake_distribution(
        site,
        "fake-extra",
        "fake_extra",
        """
        from tunewright import hookimpl

        from tunewright.plugins.tasks import ChatTask

        @hookimpl
        def register_tasks(register):
            register("echo", ChatTask())
    """,
    )
    pm = get_plugin_manager(env={})
    info = {p["name"]: p for p in plugin_summary(pm)}["fake_extra"]
    assert info["distribution"] == "fake-extra" and info["version"] == "1.2.3"
    assert info["registered"] == {"tasks": ["echo"]}
    assert not info["builtin"]


def test_allow_list_and_autoload_switch(site):
    install_fake_distribution(
        site,
        "fake-listed",
        "fake_listed",
        """
        from tunewright import hookimpl

        from tunewright.plugins.tasks import ChatTask

        @hookimpl
        def register_tasks(register):
            register("listed", ChatTask())
    """,
    )
    assert "listed" in get_plugin_manager(env={}).registries.tasks
    assert "listed" not in get_plugin_manager(env={ALLOW_ENV: "something-else"}).registries.tasks
    assert "listed" in get_plugin_manager(env={ALLOW_ENV: "fake-listed"}).registries.tasks
    disabled = get_plugin_manager(env={DISABLE_ENV: "1"})
    assert "listed" not in disabled.registries.tasks
    assert "chat" in disabled.registries.tasks  # built-ins always load


def test_plugin_that_raises_on_import_is_named(site):
    install_fake_distribution(
        site, "fake-broken", "fake_broken", "raise RuntimeError('boom at import')\n"
    )
    with pytest.raises(PluginError) as info:
        get_plugin_manager(env={})
    message = str(info.value)
    assert "fake_broken" in message and "fake-broken 1.2.3" in message
    assert "failed to import" in message and "boom at import" in message


def test_duplicate_method_name_names_both_plugins(site):
    install_fake_distribution(
        site,
        "fake-dup",
        "fake_dup",
        """
        from tunewright import hookimpl

        @hookimpl
        def register_methods(register):
            register("lora", object())
    """,
    )
    with pytest.raises(PluginError) as info:
        _ = get_plugin_manager(env={}).registries
    message = str(info.value)
    assert "registered method 'lora'" in message and "fake-dup 1.2.3" in message
    assert "registered already" in message and "distribution tunewright" in message


def test_bad_registered_name_is_refused():
    class Plugin:
        @hookimpl
        def register_methods(self, register):
            register("Bad Name", object())

    with pytest.raises(PluginError, match="lowercase"):
        _ = get_plugin_manager(plugins=[("badname", Plugin())], env={DISABLE_ENV: "1"}).registries


def test_misspelt_hook_fails_loudly_with_a_suggestion():
    class Plugin:
        @hookimpl
        def register_method(self, register):  # missing "s"
            pass

    with pytest.raises(PluginError) as info:
        get_plugin_manager(plugins=[("typo", Plugin())], env={DISABLE_ENV: "1"})
    assert "register_method" in str(info.value) and "register_methods" in str(info.value)


def test_plugin_that_raises_while_registering_is_named():
    class Plugin:
        @hookimpl
        def register_tasks(self, register):
            raise ValueError("no tasks today")

    with pytest.raises(
        PluginError, match="'raiser' failed in register_tasks: ValueError: no tasks today"
    ):
        _ = get_plugin_manager(plugins=[("raiser", Plugin())], env={DISABLE_ENV: "1"}).registries


def test_unknown_name_lists_what_is_registered():
    from tunewright import ConfigError

    registries = get_plugin_manager(env={}).registries
    with pytest.raises(ConfigError) as info:
        registries.get("tasks", "chta", key="task")
    assert "did you mean 'chat'" in str(info.value) and "classification" in str(info.value)
