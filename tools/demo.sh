#!/usr/bin/env bash
# Bootstrap, then run the demo: loopback broker, simulated devices, the daemon and the ward view.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

tools/bootstrap.sh cpu
exec .venv/bin/icu-edge demo "$@"
