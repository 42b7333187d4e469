"""6. Server killed mid-transfer; client reconnects. Also: the client listens before the server is up."""

import os
import select
import signal
import socket
import threading
import time

import pytest

import e2e_helpers as H

# A connection made while the tunnel is down waits up to --wait-for-tunnel seconds (10 by default) for it; the
# tests give a long wait so that a loaded machine cannot turn "held until the tunnel is back" into a refusal.
HOLD = ["--wait-for-tunnel", str(int(H.scaled(60)))]


def _wait_tunnel_back(port, timeout, client):
    waited = H.wait_tunnel_ready(port, timeout=timeout, proc=client)
    print(f"tunnel usable again after {waited:.1f}s")
    return waited


def _listeners(port: int) -> list[int]:
    """Inodes of the sockets in LISTEN state on `port` (any address), from /proc/net/tcp{,6}."""
    found = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.append(int(fields[9]))
        except FileNotFoundError:
            continue
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def _fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _still_open(sock: socket.socket) -> bool:
    """True when nothing is readable on `sock` right now: no data and no EOF or reset."""
    readable, _, _ = select.select([sock], [], [], 0)
    return not readable


@pytest.mark.deadline(90)
def test_server_killed_mid_transfer(adit, targets, blob):
    echo = targets.echo()
    t = adit.tunnel([echo.port], client_extra=HOLD)
    port = t.server.port

    s = H.connect_local(t.ports[0])
    s.settimeout(H.scaled(30))
    stop = threading.Event()
    sent = H.Progress()

    def sender():
        try:
            H.send_blob(s, blob, 64 * H.GiB, seed=7, progress=sent, shut_wr=False, stop=stop)
        except OSError as e:
            sent.error = e

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    # read until some data has made the round trip: the transfer is in flight
    received = 0
    buf = bytearray(H.MiB)
    while received < 8 * H.MiB:
        n = s.recv_into(buf)
        assert n, f"EOF after {received} bytes before the server was killed"
        received += n

    mark = t.client.log_mark()
    t.server.signal(signal.SIGKILL)
    t.server.popen.wait(H.scaled(10))
    killed_at = time.monotonic()

    # the in-flight local connection must end (EOF or reset) promptly, not hang: within 5 s (scaled)
    limit = H.scaled(5)
    how = None
    s.settimeout(0.5)
    while how is None:
        if time.monotonic() - killed_at > limit:
            stop.set()
            pytest.fail(f"local connection still open {limit:g}s after the server was killed "
                        f"(received {received} B, sent {sent.bytes} B)")
        try:
            n = s.recv_into(buf)
            if n == 0:
                how = "eof"
            received += n
        except (ConnectionResetError, BrokenPipeError):
            how = "reset"
        except socket.timeout:
            continue
    closed_after = time.monotonic() - killed_at
    stop.set()
    th.join(H.scaled(10))
    s.close()
    print(f"in-flight connection ended by {how} {closed_after:.2f}s after SIGKILL "
          f"(sent {sent.bytes} B, received {received} B)")

    line = t.client.wait_for_log("tunnel lost", timeout=5, since=mark)
    print(f"client logged: {line}")

    # While the server is down the listener keeps accepting, and a connection is held (with what it sent) until
    # the tunnel is back: it must survive at least one failed redial, then its bytes come back from the echo.
    held = socket.create_connection(("127.0.0.1", t.ports[0]), timeout=H.scaled(3))
    held.sendall(b"anyone there?")
    redial = t.client.log_mark()
    t.client.wait_for_log("cannot reach the tunnel server", timeout=10, since=redial)
    assert t.client.alive(), f"client exited with {t.client.returncode} after losing the tunnel"
    assert _still_open(held), "a connection made while the tunnel was down was closed instead of held"

    # restart the server on the same port; the held connection is carried, and a new one works too
    server2 = adit.server(allow=_same_allow(t), port=port)
    _wait_tunnel_back(t.probe_port, timeout=15, client=t.client)
    with held:
        held.settimeout(H.scaled(10))
        assert H.recv_exactly(held, 13) == b"anyone there?", "the held connection's bytes did not arrive"
        held.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(held) == b""
    with H.connect_local(t.ports[0]) as c:
        c.settimeout(H.scaled(10))
        data = blob.bytes(4 * H.MiB, seed=8)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = H.recv_until_eof(c)
        assert got == data
    assert t.client.alive() and server2.alive()


def _same_allow(t):
    """The --allow arguments the first server was started with."""
    argv = t.server.argv
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--allow"]


@pytest.mark.deadline(60)
def test_client_listens_before_server_is_up(adit, targets):
    echo = targets.echo()
    port = H.free_port()
    lport = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{port}", [(lport, "127.0.0.1", echo.port)])   # waits for its listener
    client.wait_for_log("cannot reach the tunnel server", timeout=10)   # a dial failed: it keeps trying
    assert client.alive(), f"client exited with {client.returncode} while the server was not up"
    assert _listeners(lport) and H.port_accepts(lport)
    adit.server(allow=[f"127.0.0.1:{echo.port}"], port=port)
    _wait_tunnel_back(lport, timeout=15, client=client)


@pytest.mark.deadline(90)
def test_server_restarted_twice(adit, targets):
    """Repeated loss and recovery; the client neither exits nor leaks its listener: after each round there is
    still exactly one listening socket on each forward port, the same one, the client's, and the client holds
    no more descriptors than before (no listener, tunnel or stream socket left behind)."""
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    allow = _same_allow(t)
    pid = t.client.pid
    ports = [t.ports[0], t.probe_port]
    first = {p: _listeners(p) for p in ports}
    for p in ports:
        assert len(first[p]) == 1, f"{len(first[p])} listening sockets on forward port {p} before any restart"
        assert first[p][0] in _socket_inodes(pid), f"the listener on {p} is not the client's"
    baseline = _fd_count(pid)
    server = t.server
    for round_ in range(2):
        server.signal(signal.SIGKILL)
        server.popen.wait(H.scaled(10))
        H.wait_until(lambda: len(t.client.log_lines_matching("tunnel lost")) >= round_ + 1, timeout=5,
                     what=f"'tunnel lost' logged {round_ + 1} time(s)")
        mark = t.client.log_mark()
        t.client.wait_for_log("cannot reach the tunnel server", timeout=10, since=mark)
        assert t.client.alive()
        server = adit.server(allow=allow, port=t.server.port)
        _wait_tunnel_back(t.ports[0], timeout=15, client=t.client)
        for p in ports:
            now = _listeners(p)
            assert now == first[p], (f"round {round_ + 1}: listening sockets on forward port {p} are {now}, "
                                     f"were {first[p]}: the listener was leaked or replaced")
        try:
            H.wait_until(lambda: _fd_count(pid) <= baseline, timeout=10,
                         what=f"round {round_ + 1}: the client's descriptors back to {baseline}")
        except AssertionError as e:
            pytest.fail(f"{e}: it holds {_fd_count(pid)}: {sorted(os.listdir(f'/proc/{pid}/fd'))}")
    assert len(t.client.log_lines_matching("tunnel lost")) == 2
    assert t.client.log_lines_matching("is up again")
