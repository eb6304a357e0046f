"""The rules of the layout, checked on the source: who may import whom, and what the engine may
ask of a plugin's objects."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import tunewright
from tunewright.types import OPTIONAL

ROOT = Path(__file__).resolve().parents[1]
# the checkout's folders and the packages they install as
PACKAGES = {"engine": "tunewright", "plugins": "tunewright.plugins", "vision": "tunewright.vision",
            "edge": "tunewright.edge"}


def sources(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def imported(path: Path) -> list[tuple[str, int, bool]]:
    """``(absolute module, line, at module level)`` of every import in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = PACKAGES[path.relative_to(ROOT).parts[0]]
    here = [package, *path.relative_to(ROOT).parts[1:-1]]
    top = {id(node) for node in tree.body}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno, id(node) in top) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if node.module is None or module == "tunewright":  # `from . import x`, `from tunewright import x`
                found += [(f"{module}.{alias.name}", node.lineno, id(node) in top) for alias in node.names]
            else:
                found.append((module, node.lineno, id(node) in top))
    return found


def test_the_engine_imports_no_plugin_edge_or_vision_code():
    for path in sources("engine"):
        for module, line, top_level in imported(path):
            if module.startswith(("tunewright.plugins", "tunewright.edge", "tunewright.vision")):
                # the quickstart ends with an export, imported when it gets there
                assert path.name == "quickstart.py" and not top_level, f"{path}:{line} imports {module}"


PUBLIC = set(tunewright.__all__) | {"hookspecs"}


@pytest.mark.parametrize("folder", ["plugins", "edge", "vision"])
def test_plugins_edge_and_vision_use_only_public_names(folder):
    """From the engine, only what ``tunewright`` exports (and ``tunewright.kinds``,
    ``tunewright.types``, which hold the protocols); never a module of its own such as
    ``tunewright.training`` or ``tunewright.data``."""
    for path in sources(folder):
        for module, line, _ in imported(path):
            if not module.startswith("tunewright") or module.startswith(
                    ("tunewright.plugins", "tunewright.edge", "tunewright.vision")):
                continue
            if module in ("tunewright", "tunewright.kinds", "tunewright.types"):
                continue
            name = module.split(".", 1)[1].split(".")[0]
            assert name in PUBLIC, f"{path.relative_to(ROOT)}:{line} imports {module}, not a public name of tunewright"


def test_the_edge_runtime_imports_neither_torch_nor_transformers():
    probe = ("import sys, tunewright.edge.runtime, tunewright.edge.runtime.__main__; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_tunewright_loads_no_torch_and_changes_nothing():
    """Nothing happens at import time: no torch, no environment variables, no warnings filters."""
    probe = ("import os, sys, warnings; env = dict(os.environ); filters = list(warnings.filters); "
             "import tunewright, tunewright.kinds, tunewright.types; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')), "
             "dict(os.environ) == env, warnings.filters == filters)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[] True True"


# Every getattr with a literal name in the engine, and why it is not a question to a plugin's
# object. A look-up of a plugin object's member goes through tunewright.types.optional instead.
GETATTR_ALLOWED = {
    ("config.py", "model_fields"): "pydantic models, walking a config schema",
    ("config.py", "__args__"): "typing annotations of a config schema",
    ("manager.py", "__annotations__"): "the required members of a protocol class",
    ("validate.py", "model_max_length"): "a transformers tokenizer",
    ("data/prepare.py", "model_max_length"): "a transformers tokenizer",
    ("data/prepare.py", "<dynamic>"): "DataConfig's validation/test keys",
    ("precision.py", "_tunewright_input_dtype"): "a torch module the engine bridged itself",
    ("attention.py", "_attn_implementation"): "a transformers config",
    ("attention.py", "_supports_attention_backend"): "a transformers model class",
    ("attention.py", "eager_attention_forward"): "a transformers modeling module",
    ("precision.py", "supports_gradient_checkpointing"): "a transformers model class",
    ("precision.py", "cast_input_dtype_enabled"): "a PEFT tuner layer's own switch",
    ("data/reading.py", "registries"): "a plugin manager or its registries",
    ("data/summary.py", "training"): "a JobConfig or None",
    ("manager.py", "<dynamic>"): "pluggy's hook relay",
    ("data/checks.py", "<dynamic>"): "pluggy's hook relay",
    # a plugin object written to 0.1.0's protocols, asked for what those protocols had, or an
    # adapter handing on what its wrapped object has (CHANGELOG.md lists each older form)
    ("compat.py", "<dynamic>"): "an adapter of a 0.1.0 plugin object delegating to it",
    ("compat.py", "metric_directions"): "a 0.1.0 task (which had greater_is_better instead)",
    ("compat.py", "greater_is_better"): "a 0.1.0 task",
    ("compat.py", "validate"): "a 0.1.0 task (which had none)",
    ("compat.py", "tokenize"): "a 0.1.0 task",
}


def engine_lookups() -> tuple[list[tuple[str, str, int]], list[tuple[str, str, str, int]]]:
    getattrs, optionals = [], []
    for path in sources("engine"):
        rel = path.relative_to(ROOT / "engine").as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
                continue
            if node.func.id in ("getattr", "hasattr") and len(node.args) >= 2:
                arg = node.args[1]
                name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<dynamic>"
                getattrs.append((rel, name, node.lineno))
            elif node.func.id == "optional" and len(node.args) >= 3:
                protocol, name = node.args[1], node.args[2]
                optionals.append((rel, protocol.id if isinstance(protocol, ast.Name) else "?",
                                  name.value if isinstance(name, ast.Constant) else "<dynamic>", node.lineno))
    return getattrs, optionals


def test_the_engine_asks_plugin_objects_only_for_declared_members():
    getattrs, optionals = engine_lookups()
    for rel, name, line in getattrs:
        if rel == "types.py":  # optional() itself
            continue
        assert (rel, name) in GETATTR_ALLOWED, (
            f"engine/{rel}:{line}: getattr(..., {name!r}); if it asks a plugin's object, declare the "
            "member in tunewright.types and look it up with optional()")
    assert optionals, "the walk found no optional() look-ups: it is not looking where the engine looks"
    for rel, protocol, name, line in optionals:
        assert name in OPTIONAL.get(protocol, ()), (
            f"engine/{rel}:{line}: optional(..., {protocol}, {name!r}) names no optional member of {protocol}")


def test_every_subprocess_a_test_starts_has_a_bound():
    """A hung child must fail its test, not stall the suite: every subprocess call and every wait
    for a child process names a timeout."""
    unbounded = []
    for path in sorted((ROOT / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            name = node.func.attr
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else None
            bounded = any(k.arg == "timeout" for k in node.keywords) or (name == "wait" and node.args)
            if ((owner == "subprocess" and name in ("run", "check_output", "check_call", "call"))
                    or name in ("wait", "communicate")) and not bounded:
                unbounded.append(f"{path.relative_to(ROOT)}:{node.lineno} {name}()")
    assert unbounded == []


def test_commands_take_the_invocations_plugin_manager():
    """One plugin manager per command: a command that plugins add takes the invocation's (the
    click context's object, ``@click.pass_obj``) instead of building another."""
    building, commands = [], 0
    for folder in ("plugins", "edge"):
        for path in sources(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.FunctionDef):
                    continue
                decorators = [ast.unparse(d) for d in node.decorator_list]
                if not any(".command" in d or d.startswith("click.command") for d in decorators):
                    continue
                calls = [c for c in ast.walk(node) if isinstance(c, ast.Call)
                         and getattr(c.func, "id", getattr(c.func, "attr", None)) == "get_plugin_manager"]
                if calls:
                    building.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
                commands += 1
    assert commands >= 8, "the walk found too few commands: it is not looking where they are"
    assert building == []
