#!/usr/bin/env bash
# The project's test command (README, .ci/run): lint + types + import rules, then the test suite.
#
#   bash scripts/test.sh                 # everything
#   bash scripts/test.sh -m "not slow"   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RECSCALE_VENV:-.venv}/bin
bash scripts/lint.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
set +e
"$bin/python" -m pytest -q "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: a run that tests nothing is a failure" >&2
  exit 1
fi
exit "$rc"
