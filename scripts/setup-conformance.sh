#!/usr/bin/env bash
# Installs the WebSocket conformance runner (PyPI's kosoku, which drives the
# Autobahn TestSuite cases) into a Python venv at target/venv (override with
# FOREMAN_VENV). Idempotent: a second run with the pinned version installed
# does nothing. tests/autobahn.rs looks for the runner in the same place.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${FOREMAN_VENV:-$root/target/venv}"
kosoku_version="0.1.0"
python="${PYTHON:-python3}"

installed_version() {
    [ -x "$venv/bin/python" ] || return 0
    "$venv/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version, PackageNotFoundError
try:
    print(version("kosoku"))
except PackageNotFoundError:
    pass
PY
}

if [ "$(installed_version)" = "$kosoku_version" ] && [ -x "$venv/bin/kosoku" ]; then
    echo "setup-conformance: kosoku $kosoku_version already in $venv"
    exit 0
fi

if ! command -v "$python" >/dev/null 2>&1; then
    echo "setup-conformance: $python not found; install Python 3 (3.9 or later)" >&2
    exit 1
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-conformance: creating a venv at $venv"
    mkdir -p "$(dirname "$venv")"
    if ! "$python" -m venv "$venv"; then
        # Debian's python3 ships venv without ensurepip until python3-venv is in.
        rm -rf "$venv"
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "setup-conformance: installing python3-venv"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
            "$python" -m venv "$venv"
        else
            echo "setup-conformance: '$python -m venv' failed; install python3-venv" >&2
            exit 1
        fi
    fi
fi

echo "setup-conformance: installing kosoku $kosoku_version"
"$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q "kosoku==$kosoku_version"
"$venv/bin/kosoku" --help >/dev/null
echo "setup-conformance: kosoku $(installed_version) ready at $venv/bin/kosoku"
