#!/usr/bin/env bash
# The README's test command: the Python suite, then the js unit tests (when node is installed).
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pytest -q "$@"
if ls js/tests/*.test.mjs >/dev/null 2>&1; then
  if command -v node >/dev/null 2>&1; then
    node --test js/tests/
  else
    echo "node not found: js tests skipped" >&2
  fi
fi
