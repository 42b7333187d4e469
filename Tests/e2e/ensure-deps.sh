#!/bin/sh
# Make sure python3, pytest and websockets are importable for the e2e suite.
# Idempotent; a no-op (one python start) when everything is present.
# Usage: Tests/e2e/ensure-deps.sh        (PYTHON=... to pick the interpreter)
set -eu
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
check() { "$PY" -c 'import pytest, websockets' >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

if ! command -v "$PY" >/dev/null 2>&1; then
    apt_install python3 python3-pip
    PY=python3
fi
check && exit 0

# pip first (newer websockets); PIP_BREAK_SYSTEM_PACKAGES lets pip install into
# Debian's externally managed system python.
if "$PY" -m pip --version >/dev/null 2>&1 || { apt_install python3-pip && "$PY" -m pip --version >/dev/null 2>&1; }; then
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --disable-pip-version-check \
        -r "$HERE/requirements.txt" >&2 || true
fi
check && exit 0

# Fallback: Debian's packages (for /usr/bin/python3; websockets 10.x is handled by the tests).
apt_install python3-pytest python3-websockets
if check; then exit 0; fi
if /usr/bin/python3 -c 'import pytest, websockets' >/dev/null 2>&1; then
    echo "ensure-deps: installed for /usr/bin/python3; run the suite with PYTHON=/usr/bin/python3" >&2
    exit 0
fi
echo "ensure-deps: could not install pytest and websockets for $PY" >&2
exit 1
