#!/usr/bin/env bash
# Adit benchmark entry point. See docs/benchmarks.md.
#   bench/run.sh                         full run (~9-11 min; the compression suite ~1 min,
#                                        the tls suite ~2 min, the fronts suite ~2.5 min of it)
#   BENCH_QUICK=1 bench/run.sh           quick run (~2.5-3.5 min)
#   BENCH_ONLY=throughput,pingpong BENCH_PATHS=direct,adit bench/run.sh
# Extra arguments are passed to bench/run.py (try --help).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Tools: install the missing ones from Debian packages (root only), unless
# BENCH_NO_INSTALL=1.
# squid: the HTTP CONNECT proxy of the tls suite.
declare -A pkg_of=([iperf3]=iperf3 [socat]=socat [ssh]=openssh-client
                   [ssh-keygen]=openssh-client [sshd]=openssh-server [squid]=squid)
missing_pkgs=()
for tool in iperf3 socat ssh ssh-keygen sshd squid; do
    if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
        missing_pkgs+=("${pkg_of[$tool]}")
    fi
done
if [ "${#missing_pkgs[@]}" -gt 0 ]; then
    pkgs="$(printf '%s\n' "${missing_pkgs[@]}" | sort -u | tr '\n' ' ')"
    if [ "${BENCH_NO_INSTALL:-0}" != "1" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "[bench] installing missing packages: $pkgs" >&2
        # policy-rc.d (if present) keeps sshd/iperf3/squid from being started as services
        export DEBIAN_FRONTEND=noninteractive
        timeout 300 apt-get update -qq >/dev/null 2>&1 || true
        timeout 300 apt-get install -y -qq --no-install-recommends $pkgs >/dev/null
    else
        echo "[bench] missing packages: $pkgs (install them, or unset BENCH_NO_INSTALL)" >&2
    fi
fi

# One fd per idle stream per process; raise the limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

py="${PYTHON:-}"
if [ -z "$py" ]; then
    if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=python3; fi
fi
exec "$py" "$here/run.py" "$@"
