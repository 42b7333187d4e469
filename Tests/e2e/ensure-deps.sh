#!/bin/sh
# Make sure the build and the tests have what they need: zlib's headers (permessage-deflate), python3 with
# pytest and websockets, the foreign WebSocket peers the tests run (chromium, websockify), the proxies
# (squid, tinyproxy, htpasswd from apache2-utils), an MIT KDC for the Negotiate test, and the real clients and
# servers of the fronts' tests (curl, OpenSSH, dnsmasq and dig), Debian's SOCKS server (dante) and ss (iproute2),
# and the tools that check examples/ (nginx, haproxy, docker-compose, systemd-analyze; kubernetes-validate and
# PyYAML from requirements.txt).
# Idempotent; a no-op (a few checks) when everything is present.
# Usage: Tests/e2e/ensure-deps.sh        (PYTHON=... to pick the interpreter)
set -eu
PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "$0")" && pwd)
REQS="$HERE/requirements.txt"
# The Python packages are there and new enough: every "name>=version" line of requirements.txt is checked
# against the installed version (an old websockets imports fine, and then two test modules fail).
# Prints what is missing or too old; quiet when all is well.
check_versions() {
    "$1" - "$REQS" <<'PYEOF'
import re, sys
from importlib import metadata

# The module to import where it is not the distribution's name with - as _.
IMPORT_NAMES = {"pyyaml": "yaml"}

def parts(v):
    return tuple(int(x) for x in re.findall(r"\d+", v)[:3])

bad = []
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)", line)
    if not m:
        sys.exit(f"ensure-deps: cannot read requirement {line!r}")
    name, minimum = m.groups()
    try:
        __import__(IMPORT_NAMES.get(name.lower(), name.replace("-", "_")))
        have = metadata.version(name)
    except Exception as e:
        bad.append(f"{name} is not importable ({type(e).__name__})")
        continue
    if parts(have) < parts(minimum):
        bad.append(f"{name} {have} is older than the {minimum} the tests need")
if bad:
    print("; ".join(bad))
    sys.exit(1)
PYEOF
}
check() { check_versions "$PY" >/dev/null 2>&1; }

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# System packages, installed only when missing (one apt-get update, one install).
missing=""
[ -f /usr/include/zlib.h ] || missing="$missing zlib1g-dev"
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
command -v websockify >/dev/null 2>&1 || missing="$missing websockify"
command -v squid >/dev/null 2>&1 || [ -x /usr/sbin/squid ] || missing="$missing squid"
command -v tinyproxy >/dev/null 2>&1 || [ -x /usr/bin/tinyproxy ] || missing="$missing tinyproxy"
command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"
[ -x /usr/sbin/krb5kdc ] || missing="$missing krb5-kdc krb5-admin-server"
command -v kinit >/dev/null 2>&1 || missing="$missing krb5-user"
command -v curl >/dev/null 2>&1 || missing="$missing curl"
[ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
command -v dnsmasq >/dev/null 2>&1 || [ -x /usr/sbin/dnsmasq ] || missing="$missing dnsmasq-base"
command -v dig >/dev/null 2>&1 || missing="$missing dnsutils"
command -v danted >/dev/null 2>&1 || [ -x /usr/sbin/danted ] || missing="$missing dante-server"
command -v ss >/dev/null 2>&1 || missing="$missing iproute2"
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing="$missing nginx"
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing="$missing haproxy"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
# `docker compose config` (the plugin) or Debian's docker-compose: either validates a compose file without a daemon.
{ docker compose version >/dev/null 2>&1 || command -v docker-compose >/dev/null 2>&1; } || missing="$missing docker-compose"
command -v "$PY" >/dev/null 2>&1 || missing="$missing python3 python3-pip"
if [ -n "$missing" ]; then
    echo "ensure-deps: installing$missing" >&2
    apt_install $missing
fi
command -v "$PY" >/dev/null 2>&1 || PY=python3
check && exit 0

# pip first (newer websockets); PIP_BREAK_SYSTEM_PACKAGES lets pip install into
# Debian's externally managed system python.
if "$PY" -m pip --version >/dev/null 2>&1 || { apt_install python3-pip && "$PY" -m pip --version >/dev/null 2>&1; }; then
    PIP_BREAK_SYSTEM_PACKAGES=1 "$PY" -m pip install -q --disable-pip-version-check \
        -r "$HERE/requirements.txt" >&2 || true
fi
check && exit 0

# Fallback: Debian's packages (for /usr/bin/python3). Debian 12's python3-websockets is 10.4, too old for
# test_raw_websockets.py and test_compression.py: the version check below says so instead of passing.
apt_install python3-pytest python3-websockets
if check; then exit 0; fi
if [ -x /usr/bin/python3 ] && check_versions /usr/bin/python3 >/dev/null 2>&1; then
    echo "ensure-deps: installed for /usr/bin/python3; run the suite with PYTHON=/usr/bin/python3" >&2
    exit 0
fi
echo "ensure-deps: the Python packages for $PY do not meet $REQS: $(check_versions "$PY")" >&2
exit 1
