#!/usr/bin/env bash
# Install (if needed), lint, type-check, run the full test suite, then build the docs site strictly.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV="${STEPPO_VENV:-.venv}"
"$VENV/bin/ruff" check .
"$VENV/bin/python" -m mypy   # the files and settings are pyproject.toml's [tool.mypy]
"$VENV/bin/python" -m pytest "$@"
"$VENV/bin/python" -m mkdocs build --strict --quiet --site-dir "${TMPDIR:-/tmp}/steppo-site"
echo "docs: mkdocs build --strict ok"
