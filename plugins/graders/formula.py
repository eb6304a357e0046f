"""``multi``: a formula over named graders, ``calculate_output: "(name + email) / 2"``.

``graders`` maps a variable name to a grader config; the formula may use those names, numbers,
``+ - * /``, ``^`` (power, as in the hosted graders), parentheses and ``min max abs floor ceil exp
sqrt log``. It is parsed once into a syntax tree and evaluated by walking that tree: nothing else
is allowed (no attribute, no call of anything not listed, no Python ``eval``).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tunewright import ConfigError

from .templates import name_of, require

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": math.floor,
    "ceil": math.ceil,
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
BINARY: dict[type, Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
UNARY: dict[type, Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def parse_formula(text: str, names: set[str], where: str) -> ast.expr:
    """The formula's tree, every node checked against what is allowed."""
    try:
        # ^ is power in the hosted formulas; as ** it also binds as power does
        tree = ast.parse(text.replace("^", "**"), mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"{where}: cannot parse {text!r}: {exc.msg}") from exc
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and node.id not in FUNCTIONS:
                raise ConfigError(
                    f"{where}: {node.id!r} is neither a grader of this multi grader "
                    f"({', '.join(sorted(names)) or 'none'}) nor a function "
                    f"({', '.join(FUNCTIONS)})"
                )
        elif isinstance(node, ast.Call):
            if not (isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS) or node.keywords:
                raise ConfigError(
                    f"{where}: only {', '.join(FUNCTIONS)} may be called, with plain arguments"
                )
        elif isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
                raise ConfigError(f"{where}: only numbers may be written, not {node.value!r}")
        elif isinstance(node, ast.BinOp):
            if type(node.op) not in BINARY:
                raise ConfigError(f"{where}: operator {type(node.op).__name__} is not allowed")
        elif isinstance(node, ast.UnaryOp):
            if type(node.op) not in UNARY:
                raise ConfigError(f"{where}: operator {type(node.op).__name__} is not allowed")
        elif not isinstance(node, (ast.Load, ast.operator, ast.unaryop)):
            raise ConfigError(f"{where}: {type(node).__name__} is not allowed in a formula")
    return tree


def evaluate(node: ast.expr, values: Mapping[str, float]) -> float:
    if isinstance(node, ast.Constant):
        return float(node.value)
    if isinstance(node, ast.Name):
        return float(values[node.id])
    if isinstance(node, ast.BinOp):
        return float(
            BINARY[type(node.op)](evaluate(node.left, values), evaluate(node.right, values))
        )
    if isinstance(node, ast.UnaryOp):
        return float(UNARY[type(node.op)](evaluate(node.operand, values)))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return float(FUNCTIONS[node.func.id](*(evaluate(a, values) for a in node.args)))
    raise ValueError(f"{type(node).__name__} is not allowed in a formula")


@dataclass
class MultiGrader:
    name: str
    graders: dict[str, Any]
    formula: ast.expr
    text: str

    def grade(self, sample: Mapping[str, Any], item: Mapping[str, Any]) -> float:
        values = {key: float(g.grade(sample, item)) for key, g in self.graders.items()}
        try:
            return evaluate(self.formula, values)
        except (ArithmeticError, ValueError) as exc:
            raise ValueError(
                f"multi grader {self.name!r}: {self.text!r} with {values}: {exc}"
            ) from exc


def multi(spec: Mapping[str, Any], build: Callable[[Any], Any]) -> MultiGrader:
    name = name_of(spec)
    graders = require(spec, "graders", "multi")
    text = require(spec, "calculate_output", "multi")
    if not isinstance(graders, Mapping) or not graders:
        raise ConfigError(f"multi grader {name!r}: 'graders' maps variable names to graders")
    for key, inner in graders.items():
        if isinstance(inner, Mapping) and inner.get("type") == "multi":
            raise ConfigError(f"multi grader {name!r}: graders.{key}: a multi grader cannot nest")
    if not isinstance(text, str):
        raise ConfigError(f"multi grader {name!r}: calculate_output is a formula (text)")
    formula = parse_formula(text, set(graders), f"multi grader {name!r}: calculate_output")
    built = {str(key): build(inner) for key, inner in graders.items()}
    return MultiGrader(name, built, formula, text)
