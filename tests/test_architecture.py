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
PACKAGES = {
    "engine": "tunewright",
    "plugins": "tunewright.plugins",
    "vision": "tunewright.vision",
    "edge": "tunewright.edge",
}


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
            if (
                node.module is None or module == "tunewright"
            ):  # `from . import x`, `from tunewright import x`
                found += [
                    (f"{module}.{alias.name}", node.lineno, id(node) in top) for alias in node.names
                ]
            else:
                found.append((module, node.lineno, id(node) in top))
    return found


def test_the_engine_imports_no_plugin_edge_or_vision_code():
    for path in sources("engine"):
        for module, line, top_level in imported(path):
            if module.startswith(("tunewright.plugins", "tunewright.edge", "tunewright.vision")):
                # the quickstart ends with an export, imported when it gets there
                assert path.name == "quickstart.py" and not top_level, (
                    f"{path}:{line} imports {module}"
                )


PUBLIC = set(tunewright.__all__) | {"hookspecs"}


@pytest.mark.parametrize("folder", ["plugins", "edge", "vision"])
def test_plugins_edge_and_vision_use_only_public_names(folder):
    """From the engine, only what ``tunewright`` exports (and ``tunewright.kinds``,
    ``tunewright.types``, which hold the protocols); never a module of its own such as
    ``tunewright.training`` or ``tunewright.data``."""
    for path in sources(folder):
        for module, line, _ in imported(path):
            if not module.startswith("tunewright") or module.startswith(
                ("tunewright.plugins", "tunewright.edge", "tunewright.vision")
            ):
                continue
            if module in ("tunewright", "tunewright.kinds", "tunewright.types"):
                continue
            name = module.split(".", 1)[1].split(".")[0]
            assert name in PUBLIC, (
                f"{path.relative_to(ROOT)}:{line} imports {module}, not a public name of tunewright"
            )


def test_the_edge_runtime_imports_neither_torch_nor_transformers():
    probe = (
        "import sys, tunewright.edge.runtime, tunewright.edge.runtime.__main__; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_tunewright_loads_no_torch_and_changes_nothing():
    """Nothing happens at import time: no torch, no environment variables, no warnings filters."""
    probe = (
        "import os, sys, warnings; env = dict(os.environ); filters = list(warnings.filters); "
        "import tunewright, tunewright.kinds, tunewright.types; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')), "
        "dict(os.environ) == env, warnings.filters == filters)"
    )
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
                name = (
                    arg.value
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                    else "<dynamic>"
                )
                getattrs.append((rel, name, node.lineno))
            elif node.func.id == "optional" and len(node.args) >= 3:
                protocol, name = node.args[1], node.args[2]
                optionals.append(
                    (
                        rel,
                        protocol.id if isinstance(protocol, ast.Name) else "?",
                        name.value if isinstance(name, ast.Constant) else "<dynamic>",
                        node.lineno,
                    )
                )
    return getattrs, optionals


def test_the_engine_asks_plugin_objects_only_for_declared_members():
    getattrs, optionals = engine_lookups()
    for rel, name, line in getattrs:
        if rel == "types.py":  # optional() itself
            continue
        assert (rel, name) in GETATTR_ALLOWED, (
            f"engine/{rel}:{line}: getattr(..., {name!r}); if it asks a plugin's object, declare the "
            "member in tunewright.types and look it up with optional()"
        )
    assert optionals, (
        "the walk found no optional() look-ups: it is not looking where the engine looks"
    )
    for rel, protocol, name, line in optionals:
        assert name in OPTIONAL.get(protocol, ()), (
            f"engine/{rel}:{line}: optional(..., {protocol}, {name!r}) names no optional member of {protocol}"
        )


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
            bounded = any(k.arg == "timeout" for k in node.keywords) or (
                name == "wait" and node.args
            )
            if (
                (owner == "subprocess" and name in ("run", "check_output", "check_call", "call"))
                or name in ("wait", "communicate")
            ) and not bounded:
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
                calls = [
                    c
                    for c in ast.walk(node)
                    if isinstance(c, ast.Call)
                    and getattr(c.func, "id", getattr(c.func, "attr", None)) == "get_plugin_manager"
                ]
                if calls:
                    building.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}")
                commands += 1
    assert commands >= 8, "the walk found too few commands: it is not looking where they are"
    assert building == []


# -- import cycles --------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT)
    parts = [PACKAGES[rel.parts[0]], *rel.parts[1:-1]]
    return ".".join(parts if path.stem == "__init__" else [*parts, path.stem])


MODULES = {module_name(path): path for folder in PACKAGES for path in sources(folder)}


def runtime_imports(path: Path) -> list[tuple[str, int]]:
    """``(tunewright module, line)`` of every import in a file that runs, at module level or
    inside a function; an import under ``if TYPE_CHECKING:`` runs never and is left out.
    ``from package import name`` counts as an import of ``package.name`` where that is a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    name = module_name(path)
    package = name.split(".") if path.stem == "__init__" else name.split(".")[:-1]
    hidden = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING")
        for statement in node.body
        for inner in ast.walk(statement)
    }
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (
                ".".join(
                    package[: len(package) - node.level + 1]
                    + ([node.module] if node.module else [])
                )
                if node.level
                else node.module or ""
            )
            found += [
                (f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base, node.lineno)
                for alias in node.names
            ]
    return [(module, line) for module, line in found if module in MODULES and module != name]


def import_cycles() -> list[list[str]]:
    """Every set of tunewright modules that import one another round a loop (strongly connected
    components of the import graph, Tarjan's algorithm), each as ``module -> module (file:line)``
    edges inside the set."""
    graph = {module: dict(reversed(runtime_imports(path))) for module, path in MODULES.items()}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in graph[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                components.append(component)

    for module in graph:
        if module not in index:
            visit(module)

    def where(path: Path) -> Path:
        return path.relative_to(ROOT) if path.is_relative_to(ROOT) else path

    return [
        sorted(
            f"{module} -> {target} ({where(MODULES[module])}:{line})"
            for module in component
            for target, line in graph[module].items()
            if target in component
        )
        for component in components
    ]


def cycle_members(cycle: list[str]) -> set[str]:
    return {edge.split(" -> ")[0] for edge in cycle}


def test_no_module_imports_itself_round_a_loop():
    """A module that imports another which imports it back, however far round and however lazily
    (inside a function), is a cycle: the two belong in one layer, or the shared piece one layer
    down (as engine/checkpoints.py, plugins/federated/messages.py and server_job.py are)."""
    assert len(MODULES) > 100, "the walk found too few modules: it is not looking where the code is"
    assert import_cycles() == []


def test_the_cycle_walk_sees_a_lazy_import(tmp_path, monkeypatch):
    """The walk counts an import inside a function, and skips one under TYPE_CHECKING."""
    a, b, c = tmp_path / "a.py", tmp_path / "b.py", tmp_path / "c.py"
    a.write_text("def f():\n    from tunewright.b import x\n")
    b.write_text("from tunewright.a import f\n")
    c.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from tunewright.a import f\n"
    )
    fake = {"tunewright.a": a, "tunewright.b": b, "tunewright.c": c}
    monkeypatch.setattr(sys.modules[__name__], "MODULES", fake)
    monkeypatch.setattr(
        sys.modules[__name__], "module_name", lambda path: {v: k for k, v in fake.items()}[path]
    )
    assert [cycle_members(cycle) for cycle in import_cycles()] == [{"tunewright.a", "tunewright.b"}]


# -- what edge/ and plugins/ ask of a plugin's objects ---------------------------------------------

# Every name edge/ and plugins/ look up with getattr or hasattr on an object that is not a
# plugin's, by what it belongs to. Any other name looked up must be a member that a protocol
# declares (tunewright.types, tunewright.edge.protocols, tunewright.edge.runtime.protocol), so a
# plugin author finds every question asked of their object documented there.
NOT_PLUGIN_MEMBERS = {
    "a transformers or PEFT model, its config, generation config or output": {
        "base_model",
        "base_model_prefix",
        "config",
        "eos_token_id",
        "generation_config",
        "get_decoder",
        "get_output_embeddings",
        "hidden_size",
        "image_seq_length",
        "image_token_id",
        "initializer_range",
        "language_model",
        "lm_head",
        "logits",
        "lora_variant",
        "model",
        "model_type",
        "module",
        "multi_modal_projector",
        "num_hidden_layers",
        "pad_token_id",
        "past_key_values",
        "text_config",
        "trust_remote_code",
        "unload",
        "use_dora",
        "value",
        "vision_feature_layer",
        "vision_tower",
        "weight",
        "training",
        "eval",
        "parameters",
    },
    "a transformers tokenizer, image processor or processor": {
        "backend_tokenizer",
        "chat_template",
        "do_center_crop",
        "do_normalize",
        "do_rescale",
        "do_resize",
        "image_mean",
        "image_processor",
        "image_token",
        "is_fast",
        "model_max_length",
        "resample",
        "rescale_factor",
        "tokenizer",
        "to_dict",
    },
    "torch, numpy, onnx and OpenCV objects": {
        "ByteSize",
        "CascadeClassifier",
        "__len__",
        "data",
        "detach",
        "haarcascades",
        "numpy",
    },
    "tunewright's own objects: a job's config, a plugin manager, a method's record on the model "
    "it changed, a federated site, reply or error, a quantization scheme": {
        "answering_node",
        "infos",
        "kind",
        "load_seconds",
        "max_length",
        "name",
        "site_seconds",
        "tunewright_method",
    },
}


def declared_members() -> set[str]:
    """Every member (required or optional) of every protocol a plugin's object answers to."""
    import tunewright.edge.protocols
    import tunewright.edge.runtime.protocol
    import tunewright.types

    names = set()
    for module in (tunewright.types, tunewright.edge.protocols, tunewright.edge.runtime.protocol):
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and getattr(value, "_is_protocol", False)
                and value.__module__ == module.__name__
            ):
                names |= set(getattr(value, "__annotations__", {}))
                names |= {
                    name
                    for name, member in vars(value).items()
                    if not name.startswith("_")
                    and (callable(member) or isinstance(member, property))
                }
    return names


@pytest.mark.parametrize("folder", ["edge", "plugins"])
def test_edge_and_plugins_ask_plugin_objects_only_for_declared_members(folder):
    declared = declared_members()
    known = set().union(*NOT_PLUGIN_MEMBERS.values())
    undeclared, seen = [], 0
    for path in sources(folder):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id in ("getattr", "hasattr")
                and len(node.args) >= 2
            ):
                continue
            arg = node.args[1]
            if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                continue  # a name the code computes: the allowed names of a table of its own
            seen += 1
            if arg.value not in declared | known:
                undeclared.append(
                    f"{path.relative_to(ROOT)}:{node.lineno}: {node.func.id}(..., {arg.value!r})"
                )
    assert seen > 10, "the walk found too few look-ups: it is not looking where the code looks"
    assert undeclared == [], (
        "a look-up of a member no protocol declares: if it asks a plugin's object, declare the member "
        "in its protocol's Options class; if not, add the name to NOT_PLUGIN_MEMBERS with its owner"
    )
