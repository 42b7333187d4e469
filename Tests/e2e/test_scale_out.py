"""Many servers behind an ordinary load balancer (issue 9): three `adit server` instances behind haproxy, 200
client sessions spread over them, streams carrying SHA-256-checked data. One instance gets SIGTERM: its clients
get GOAWAY and dial again through haproxy, which sends them to the other two; streams open on it finish there,
and no stream opened after the GOAWAY fails. The servers share nothing, so nothing else is needed."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import e2e_helpers as H

CLIENTS = 200
SERVERS = 3


def haproxy_exe() -> str | None:
    return shutil.which("haproxy") or next((p for p in ("/usr/sbin/haproxy",) if os.access(p, os.X_OK)), None)


def haproxy_config(path: Path, port: int, backends: list[int]) -> Path:
    servers = "\n".join(f"    server s{k + 1} 127.0.0.1:{p} check inter 500ms fall 1 rise 2"
                        for k, p in enumerate(backends))
    path.write_text(f"""global
    maxconn 2000

defaults
    mode http
    option redispatch
    retries 3
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout tunnel 1h

frontend tunnels
    bind 127.0.0.1:{port}
    default_backend adit

backend adit
    balance roundrobin
{servers}
""")
    return path


def exchange(port: int, size: int, seed: int) -> str:
    """Sends `size` seeded random bytes through local `port` to the echo target; returns '' when the echo came
    back whole and equal (by SHA-256), else what went wrong."""
    data = random.Random(seed).randbytes(size)
    try:
        with H.connect_local(port, timeout=H.scaled(10)) as s:
            s.settimeout(H.scaled(30))
            s.sendall(data)
            back = H.recv_exactly(s, size)
    except Exception as e:       # noqa: BLE001 - every failure is reported, with its port
        return f"port {port}: {type(e).__name__}: {e}"
    if hashlib.sha256(back).digest() != hashlib.sha256(data).digest():
        return f"port {port}: the echo differs"
    return ""


@pytest.mark.skipif(haproxy_exe() is None, reason="haproxy is not installed (Tests/e2e/ensure-deps.sh installs it)")
@pytest.mark.deadline(420)
def test_three_servers_behind_haproxy_and_one_drains(adit, targets, tmp_path):
    echo = targets.echo()
    servers = [adit.server([f"127.0.0.1:{echo.port}"], extra=["--drain-timeout", "60"]) for _ in range(SERVERS)]
    front = H.free_port()
    proxy = H.AditProcess("haproxy", [haproxy_exe(), "-db", "-f",
                                      str(haproxy_config(tmp_path / "haproxy.cfg", front, [s.port for s in servers]))],
                          tmp_path / "haproxy.log")
    adit.procs.append(proxy)
    proxy.start()
    H.wait_for_port(front, timeout=10, proc=proxy, connect=False)

    clients, ports = [], []
    for _ in range(CLIENTS):
        local = H.free_port()
        clients.append(adit.client(f"ws://127.0.0.1:{front}/", [(local, "127.0.0.1", echo.port)],
                                   extra=["--wait-for-tunnel", "30", "--log-level", "notice"]))
        ports.append(local)
    H.wait_until(lambda: all(c.log_lines_matching(" is up") for c in clients), 60, what="200 tunnels up", interval=0.5)
    opened = [len(s.log_lines_matching("tunnel opened")) for s in servers]
    print(f"sessions per server: {opened}")
    assert sum(opened) == CLIENTS, opened
    assert all(n >= CLIENTS // SERVERS - 10 for n in opened), f"haproxy did not spread the sessions: {opened}"

    with ThreadPoolExecutor(max_workers=32) as pool:
        failures = [f for f in pool.map(lambda k: exchange(ports[k], 64 * 1024, k), range(CLIENTS)) if f]
    assert not failures, failures[:10]

    # Long streams on every client while the first server drains: they must finish where they are.
    long_failures: list[str] = []

    def long_stream(k: int) -> None:
        data = random.Random(10_000 + k).randbytes(256 * 1024)
        try:
            with H.connect_local(ports[k], timeout=H.scaled(10)) as s:
                s.settimeout(H.scaled(60))
                for i in range(0, len(data), 32 * 1024):       # in pieces, across the SIGTERM
                    s.sendall(data[i:i + 32 * 1024])
                    time.sleep(0.05)
                back = H.recv_exactly(s, len(data))
            if back != data:
                long_failures.append(f"long stream on port {ports[k]}: the echo differs")
        except Exception as e:   # noqa: BLE001
            long_failures.append(f"long stream on port {ports[k]}: {type(e).__name__}: {e}")

    long_threads = [threading.Thread(target=long_stream, args=(k,), daemon=True) for k in range(0, CLIENTS, 4)]
    for t in long_threads:
        t.start()
    time.sleep(0.2)
    draining = servers[0]
    draining.signal(signal.SIGTERM)
    told = H.wait_until(
        lambda: (n := sum(bool(c.log_lines_matching("the server is draining the tunnel")) for c in clients))
        >= opened[0] and n, 20, interval=0.5, what="the first server's clients to get GOAWAY")
    assert told == opened[0], f"{told} clients got GOAWAY, the first server had {opened[0]}"

    # Streams opened after the GOAWAY, on every client: none may fail.
    with ThreadPoolExecutor(max_workers=32) as pool:
        failures = [f for f in pool.map(lambda k: exchange(ports[k], 32 * 1024, 20_000 + k), range(CLIENTS)) if f]
    assert not failures, f"{len(failures)} streams opened after the GOAWAY failed: {failures[:10]}"
    H.join_all(long_threads, timeout=120)
    assert not long_failures, long_failures[:10]

    # The drained server finished its streams and exited 0; its clients are on the other two now.
    H.wait_until(lambda: draining.poll() is not None, 90, what="the drained server to exit")
    assert draining.returncode == 0, draining.log_tail()
    again = sum(len(s.log_lines_matching("tunnel opened")) for s in servers[1:])
    assert again == sum(opened[1:]) + opened[0], (opened, again)
    print(f"after the drain: {[len(s.log_lines_matching('tunnel opened')) for s in servers[1:]]} on the other two")
    assert all(c.alive() for c in clients)


@pytest.mark.skipif(haproxy_exe() is None, reason="haproxy is not installed (Tests/e2e/ensure-deps.sh installs it)")
def test_wss_terminated_at_adit_behind_haproxy_in_tcp_mode(adit, adit_bin, targets, tmp_path):
    """The other way to run behind a balancer: haproxy passes TCP through (mode tcp) and TLS ends at adit, so
    the balancer never sees the tunnel's bytes. Two servers, sessions spread over both, bytes checked."""
    import subprocess
    echo = targets.echo()
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    r = subprocess.run([str(adit_bin), "keygen", "--cert", str(cert), "--key", str(key), "--ip", "127.0.0.1"],
                       capture_output=True, text=True, timeout=H.scaled(20), env=H._child_env())
    assert r.returncode == 0, r.stderr
    servers = [adit.server([f"127.0.0.1:{echo.port}"], wait=False,
                           extra=["--tls-cert", str(cert), "--tls-key", str(key)]) for _ in range(2)]
    for s in servers:
        s.wait_for_log(f"listening on wss://127.0.0.1:{s.port}/", timeout=10)
    front = H.free_port()
    cfg = haproxy_config(tmp_path / "haproxy.cfg", front, [s.port for s in servers]).read_text()
    cfg = cfg.replace("    mode http\n", "    mode tcp\n")
    assert "mode tcp" in cfg and "mode http" not in cfg
    (tmp_path / "haproxy.cfg").write_text(cfg)
    proxy = H.AditProcess("haproxy", [haproxy_exe(), "-db", "-f", str(tmp_path / "haproxy.cfg")], tmp_path / "haproxy.log")
    adit.procs.append(proxy)
    proxy.start()
    H.wait_for_port(front, timeout=10, proc=proxy, connect=False)

    # haproxy holds no certificate: a client that verifies adit's (--ca-file) shows TLS ends at adit.
    locals_ = []
    for _ in range(4):
        local = H.free_port()
        client = adit.client(f"wss://127.0.0.1:{front}/", [(local, "127.0.0.1", echo.port)],
                             extra=["--ca-file", str(cert)])
        H.wait_tunnel_ready(local, timeout=15, proc=client)
        locals_.append(local)
    failures = [f for k, port in enumerate(locals_) if (f := exchange(port, 256 * H.KiB, k))]
    assert not failures, failures
    opened = [len(s.log_lines_matching("tunnel opened")) for s in servers]
    assert all(n >= 1 for n in opened), f"haproxy did not spread the sessions over both servers: {opened}"
