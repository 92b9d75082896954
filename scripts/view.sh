#!/usr/bin/env bash
# Print the path of a throw-away directory in which recscale/<folder> links to <repo>/<folder>.
#
# Static tools (mypy, import-linter) do not understand setuptools' package-dir mapping of the
# top-level folders to recscale.<folder>; pointing them at this view lets them see the package as
# Python imports it. The caller removes the directory.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
view=$(mktemp -d)
mkdir "$view/recscale"
for folder in configs data modules sharding trainer launch reports serving; do
  ln -s "$repo/$folder" "$view/recscale/$folder"
done
echo "$view"
