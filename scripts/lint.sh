#!/usr/bin/env bash
# Lint, format check, strict types on configs/ and sharding/, import rules. Used by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RECSCALE_VENV:-.venv}/bin
echo "[lint] ruff check"
"$bin/ruff" check .
echo "[lint] ruff format --check"
"$bin/ruff" format --check .
echo "[lint] mypy (strict) on configs/ and sharding/"
PYTHON="$bin/python" bash scripts/typecheck.sh
echo "[lint] import-linter contracts"
view=$(bash scripts/view.sh)
trap 'rm -rf "$view"' EXIT
(cd "$view" && PYTHONPATH="$view" "$OLDPWD/$bin/lint-imports" --config "$OLDPWD/pyproject.toml" --no-cache)
