#!/usr/bin/env bash
# The one check script developers and CI both run: bootstrap, then ruff, mypy, pytest; stops at the
# first failure with its exit code. Extra arguments go to pytest (e.g. tools/test.sh -k watch -x).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

tools/bootstrap.sh cpu,dev

step() {
    printf 'test: %s\n' "$*"
    local rc=0
    "$@" || rc=$?
    if ((rc != 0)); then
        printf 'test: FAILED (exit %d): %s\n' "$rc" "$*" >&2
        exit "$rc"
    fi
}

step .venv/bin/ruff check .
step .venv/bin/mypy
# pytest exits 5 when it collected no test: that is a failure too (and stays exit 5)
step .venv/bin/pytest -q "$@"
printf 'test: all passed\n'
