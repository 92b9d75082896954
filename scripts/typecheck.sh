#!/usr/bin/env bash
# Type-check configs/ and sharding/ strictly with mypy, as the installed packages recscale.<folder>
# (through the view of scripts/view.sh: mypy does not understand setuptools' package-dir mapping,
# and without the view every import of recscale.* would silently become Any).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
view=$(bash scripts/view.sh)
trap 'rm -rf "$view"' EXIT
MYPYPATH="$view" "${PYTHON:-.venv/bin/python}" -m mypy --namespace-packages --explicit-package-bases \
  --cache-dir "$repo/.mypy_cache" -p recscale.configs -p recscale.sharding "$@"
