"""The recipe configs under examples/ load as they are written, and the README points at each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tunewright import get_plugin_manager
from tunewright.config import load_config

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_the_readme_names_exactly_the_recipes_there_are():
    """No recipe the README names is missing, and none under examples/ goes unnamed; a README
    that named none would leave the test below nothing to check."""
    named = set(re.findall(r"examples/[\w/.-]+\.yaml", (ROOT / "README.md").read_text()))
    assert named, "the README names no recipe"
    assert named == {p.relative_to(ROOT).as_posix() for p in RECIPES}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_a_recipe_loads_and_the_readme_shows_it(path):
    config = load_config(
        yaml.safe_load(path.read_text()), get_plugin_manager().registries, source=str(path)
    )
    assert config.output and config.data.train.startswith("demo/")  # the demo data set's paths
    assert str(path.relative_to(ROOT)) in (ROOT / "README.md").read_text()
