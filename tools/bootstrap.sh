#!/usr/bin/env bash
# Prepare this checkout to build, test and demo icu-edge: system packages (Debian 12), .venv, editable
# install. Idempotent: a second run makes no apt call and no pip call unless pyproject.toml changed
# or it asks for extras not yet installed. Usage: tools/bootstrap.sh [EXTRAS] (default cpu,dev).
# Exit codes: 0 ready, 69 (EX_UNAVAILABLE) something required is missing and cannot be installed here.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

EXTRAS="${1:-cpu,dev}"  # package extras: the demo needs cpu, the tests cpu,dev (dev holds report's matplotlib)
PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP="$VENV/.icu-edge-installed"
APT_PACKAGES=(mosquitto faketime tmux libsystemd-dev pkg-config gcc python3-dev python3-venv)
# faketime: libfaketime steps the daemon's wall clock in tests/fault/test_clock.py
# tmux: the ward view's tests run `icu-edge watch` in a detached pane of a fixed size (tests/tools/test_watch_tmux.py)

say() { printf 'bootstrap: %s\n' "$*"; }
die() { printf 'bootstrap: error: %s\n' "$*" >&2; exit 69; }

python_ok() {  # python3 exists and is >= 3.11
    command -v "$PYTHON" >/dev/null 2>&1 &&
        "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}

python_headers_ok() {  # Python.h where this interpreter's sysconfig says
    command -v "$PYTHON" >/dev/null 2>&1 &&
        "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(0 if os.path.isfile(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)' 2>/dev/null
}

python_venv_ok() {  # Debian splits ensurepip (needed by `python3 -m venv`) into python3-venv
    command -v "$PYTHON" >/dev/null 2>&1 && "$PYTHON" -c 'import venv, ensurepip' 2>/dev/null
}

has_command() { command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]; }

libsystemd_ok() {
    command -v pkg-config >/dev/null 2>&1 && pkg-config --exists libsystemd 2>/dev/null && return 0
    dpkg -s libsystemd-dev >/dev/null 2>&1
}

missing_packages() {  # prints the apt packages whose function is missing, one per line
    has_command mosquitto || echo mosquitto
    has_command faketime || echo faketime
    has_command tmux || echo tmux
    libsystemd_ok || echo libsystemd-dev
    has_command pkg-config || echo pkg-config
    has_command gcc || echo gcc
    python_headers_ok || echo python3-dev
    python_venv_ok || echo python3-venv
}

# ---- 1. system packages ------------------------------------------------------------------------
mapfile -t missing < <(missing_packages)
if ((${#missing[@]} == 0)); then
    say "system packages present (${APT_PACKAGES[*]})"
else
    if [[ "$(id -u)" != 0 ]]; then
        die "missing: ${missing[*]}; as root run: apt-get update && apt-get install -y --no-install-recommends ${APT_PACKAGES[*]}"
    fi
    command -v apt-get >/dev/null 2>&1 ||
        die "missing: ${missing[*]}, and this is not a Debian system (no apt-get): install them by hand"
    say "installing ${APT_PACKAGES[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt_log="$(mktemp)"
    if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}"; } >"$apt_log" 2>&1; then
        tail -n 30 "$apt_log" >&2
        die "apt-get failed (log above)"
    fi
    rm -f "$apt_log"
    mapfile -t missing < <(missing_packages)
    if ((${#missing[@]} != 0)); then
        die "still missing after apt-get install: ${missing[*]} (for $(command -v "$PYTHON" || echo "$PYTHON"); with a non-Debian python, install its headers/venv support yourself or set PYTHON=/usr/bin/python3)"
    fi
fi

# ---- 2. python -----------------------------------------------------------------------------------
python_ok || die "icu-edge needs Python >= 3.11; $PYTHON is $("$PYTHON" -V 2>&1 || echo 'not found')"
say "python $("$PYTHON" -c 'import platform; print(platform.python_version())') at $(command -v "$PYTHON")"

# ---- 3. virtual environment ----------------------------------------------------------------------
venv_ok() {
    [[ -x "$VENV/bin/python" ]] &&
        "$VENV/bin/python" -c 'import sys, pip; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}
if venv_ok; then
    say "$VENV present"
else
    say "creating $VENV"
    "$PYTHON" -m venv --clear "$VENV" >/dev/null
    rm -f "$STAMP"
    venv_ok || die "$VENV was created but its python does not work"
fi

# ---- 4. editable install, only when pyproject.toml or the wanted extras changed ------------------
# The stamp holds the sha256 of pyproject.toml and the extras installed with it; a run that wants a
# subset of those extras (the demo wants only `cpu`) installs nothing.
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
have="" have_extras=""
[[ -f "$STAMP" ]] && read -r have have_extras <"$STAMP"
covered=yes
IFS=, read -ra wanted_extras <<<"$EXTRAS"
for extra in "${wanted_extras[@]}"; do
    [[ ",$have_extras," == *",$extra,"* ]] || covered=no
done
if [[ "$want" == "$have" && "$covered" == yes ]]; then
    say "icu-edge[$have_extras] installed in $VENV (pyproject.toml unchanged)"
else
    [[ "$want" == "$have" ]] && EXTRAS="$have_extras,$EXTRAS"
    EXTRAS="$(tr ',' '\n' <<<"$EXTRAS" | sed '/^$/d' | sort -u | paste -sd, -)"
    say "installing icu-edge[$EXTRAS] into $VENV (pip)"
    log="$VENV/.icu-edge-pip.log"
    rc=0
    "$VENV/bin/python" -m pip install --disable-pip-version-check -e ".[$EXTRAS]" >"$log" 2>&1 || rc=$?
    if ((rc != 0)); then
        tail -n 40 "$log" >&2
        printf 'bootstrap: error: pip install failed (exit %d); full log in %s\n' "$rc" "$log" >&2
        exit "$rc"
    fi
    printf '%s %s\n' "$want" "$EXTRAS" >"$STAMP"
fi
say "ready"
