#!/usr/bin/env bash
# The README's test command: the Python suite, then the js unit tests (when node is installed).
# Both suites always run; the exit code is non-zero if either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
status=0
python -m pytest -q "$@" || status=$?
if ls js/tests/*.test.mjs >/dev/null 2>&1; then
  if command -v node >/dev/null 2>&1; then
    node --test js/tests/ || status=$((status ? status : 1))
  else
    echo "node not found: js tests skipped" >&2
  fi
fi
exit "$status"
