"""Raw client against a foreign server: `adit client --raw` to Debian's websockify.

    websockify 127.0.0.1:WSPORT 127.0.0.1:ECHOPORT
    adit client --raw ws://127.0.0.1:WSPORT/ -L LOCALPORT

Every connection to LOCALPORT gets its own WebSocket (subprotocol `binary`, which websockify requires to be
the first one offered; no permessage-deflate, websockify has none), and websockify connects it to the echo
server. A WebSocket cannot be half-closed: when the local side sends EOF, adit closes the WebSocket (1000)
and websockify closes its target connection at once, so an echo still in flight at that moment is lost;
the tests read the whole echo before they shut down their side.

At the end, a scripted server (not websockify) sends its 101, a message, a close frame and FIN in one write:
the message must still reach the local connection (it once was lost in a race with the close).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

import e2e_helpers as H

WEBSOCKIFY = shutil.which("websockify")

# Only the tests that run websockify need it (through the `websockify` fixture, also under `bridge`); the
# scripted-server tests at the end run without it.


# ---------------------------------------------------------------------------
# websockify, started and stopped by PID


class Websockify:
    """Starts websockify processes for one test; stops them (SIGTERM, then SIGKILL) at teardown."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[H.AditProcess] = []

    def start(self, target_port: int, port: int | None = None) -> H.AditProcess:
        port = port or H.free_port()
        name = f"websockify-{len(self.procs) + 1}"
        # websockify forks one child per connection (same process group: it was started in a new session);
        # PYTHONUNBUFFERED so that its log is complete when the test reads it.
        argv = ["env", "PYTHONUNBUFFERED=1", WEBSOCKIFY, f"127.0.0.1:{port}", f"127.0.0.1:{target_port}"]
        proc = H.AditProcess(name, argv, self.tmp / f"{name}.log")   # generic: start/stop by PID, log file
        self.procs.append(proc)
        proc.start()
        proc.port = port
        proc.url = f"ws://127.0.0.1:{port}/"
        H.wait_for_port(port, timeout=10, proc=proc, connect=False)
        return proc

    @staticmethod
    def stop(proc: H.AditProcess, grace: float = 3.0) -> None:
        pid = proc.popen.pid if proc.popen else None
        proc.stop(grace=grace)   # SIGTERM: websockify terminates its children, exits in ~250 ms
        if pid is not None:      # leftover per-connection children (own process group), if any
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop_all(self) -> None:
        for p in self.procs:
            self.stop(p)


@pytest.fixture
def websockify(tmp_path):
    if WEBSOCKIFY is None:
        pytest.skip("websockify is not installed (Tests/e2e/ensure-deps.sh installs it)")
    w = Websockify(tmp_path)
    yield w
    w.stop_all()


def raw_client(adit, url: str, lport: int | None = None, bind: bool = False) -> tuple[H.AditProcess, int]:
    """`adit client --raw URL -L [127.0.0.1:]LPORT`; returns when the local port listens."""
    lport = lport or H.free_port()
    forward = f"127.0.0.1:{lport}" if bind else str(lport)
    client = adit.client(url, [], wait=False, extra=["--raw", "-L", forward])
    H.wait_for_port(lport, timeout=10, proc=client, connect=False)
    client.wait_for_log(f"forwarding 127.0.0.1:{lport} over raw WebSockets to {url}", timeout=5)
    return client, lport


@pytest.fixture
def bridge(adit, targets, websockify):
    """echo server <- websockify <- adit client --raw; yields (echo, websockify proc, client, local port)."""
    echo = targets.echo()
    ws = websockify.start(echo.port)
    client, lport = raw_client(adit, ws.url)
    return echo, ws, client, lport


# ---------------------------------------------------------------------------
# Helpers


def recv_exactly_hash(sock: socket.socket, n: int) -> str:
    """Read exactly n bytes (fail on EOF before), return their SHA-256 hex."""
    h = hashlib.sha256()
    buf = bytearray(1 * H.MiB)
    mv = memoryview(buf)
    left = n
    while left:
        got = sock.recv_into(mv[:min(left, len(buf))])
        if got == 0:
            raise EOFError(f"EOF after {n - left} of {n} bytes")
        h.update(mv[:got])
        left -= got
    return h.hexdigest()


def echo_roundtrip(port: int, blob: H.Blob, total: int, seed: int, timeout: float = 20) -> dict:
    """Send `total` bytes through the echo and read them all back (concurrently); then shut down the
    sending side and wait for the end. Returns hashes and how the connection ended. `timeout` is scaled."""
    timeout = H.scaled(timeout)
    with H.connect_local(port) as s:
        s.settimeout(timeout)
        sent: dict = {}
        err: list[BaseException] = []

        def sender():
            try:
                sent["count"], sent["sha"] = H.send_blob(s, blob, total, seed, shut_wr=False)
            except BaseException as e:  # reported by the caller
                err.append(e)

        t = threading.Thread(target=sender, name=f"send-{seed}", daemon=True)
        t.start()
        echo_sha = recv_exactly_hash(s, total)
        t.join(timeout)
        assert not err, f"sending failed: {err[0]!r}"
        assert not t.is_alive(), "sender still running after the whole echo came back"
        # All of it is back: now the half-close. adit closes the WebSocket, websockify the target connection,
        # and the local connection ends with EOF and nothing more.
        t0 = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        how, extra = H.wait_closed(s, timeout=5)
        return {"sent_sha": sent["sha"], "echo_sha": echo_sha, "end": how, "extra": extra,
                "end_after": time.monotonic() - t0}


def websockify_connections(ws: H.AditProcess) -> int:
    """Connections websockify opened to its target so far (one per WebSocket)."""
    return len(ws.log_lines_matching("connecting to: 127.0.0.1:"))


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.deadline(30)
def test_small_messages_echo(bridge):
    echo, ws, client, lport = bridge
    messages = [b"a", b"hello websockify\n", bytes(range(256)), b"\x00" * 7, b"\r\n\r\n",
                "ünïcödé ✓".encode(), bytes(range(255, -1, -1)) * 40]
    messages += [f"ping {i:03d} ".encode() * (i + 1) for i in range(50)]
    with H.connect_local(lport) as s:
        s.settimeout(H.scaled(10))
        for msg in messages:
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
        s.shutdown(socket.SHUT_WR)
        how, extra = H.wait_closed(s, timeout=5)
    assert (how, extra) == ("eof", b""), f"after the echo and SHUT_WR: {how} with {len(extra)} more bytes"
    echo.wait_results(1, timeout=5, allow_errors=True)
    assert echo.accepted == 1
    assert echo.results[0] == sum(map(len, messages)), "the echo server saw other bytes than were sent"
    assert websockify_connections(ws) == 1
    assert client.alive()


@pytest.mark.deadline(40)
def test_large_echo_8mib(bridge, blob):
    echo, ws, client, lport = bridge
    total = 8 * H.MiB
    t0 = time.monotonic()
    r = echo_roundtrip(lport, blob, total, seed=11)
    dt = time.monotonic() - t0
    print(f"8 MiB echo through adit --raw + websockify in {dt:.2f}s ({2 * total / dt / H.MiB:.0f} MiB/s both ways); "
          f"ended by {r['end']} {r['end_after'] * 1000:.0f} ms after SHUT_WR")
    assert r["echo_sha"] == r["sent_sha"], "8 MiB echo differs from what was sent"
    assert r["sent_sha"] == blob.digest(total, seed=11)[1]
    assert (r["end"], r["extra"]) == ("eof", b"")
    assert r["end_after"] < H.scaled(2.0), f"EOF {r['end_after']:.2f}s after SHUT_WR (promptly: 2 s, scaled)"
    echo.wait_results(1, timeout=5, allow_errors=True)
    assert echo.results[0] == total
    assert websockify_connections(ws) == 1


@pytest.mark.deadline(40)
def test_concurrent_connections_each_get_their_own_websocket(bridge, blob):
    echo, ws, client, lport = bridge
    n, total = 8, 1 * H.MiB
    results: dict[int, dict] = {}
    errors: dict[int, BaseException] = {}

    def run(i):
        try:
            results[i] = echo_roundtrip(lport, blob, total, seed=100 + i)
        except BaseException as e:  # reported below
            errors[i] = e

    threads = [threading.Thread(target=run, args=(i,), name=f"conn-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    H.join_all(threads, timeout=30)
    assert not errors, f"connections failed: {errors}"
    assert len(results) == n
    for i, r in results.items():
        assert r["echo_sha"] == r["sent_sha"] == blob.digest(total, seed=100 + i)[1], f"connection {i}: echo differs"
        assert (r["end"], r["extra"]) == ("eof", b""), f"connection {i}: ended by {r['end']}"
    # one WebSocket, so one websockify child and one target connection, per local connection
    echo.wait_results(n, timeout=10, allow_errors=True)
    assert echo.accepted == n
    assert sorted(echo.results) == [total] * n
    H.wait_until(lambda: websockify_connections(ws) == n, timeout=3, what=f"{n} websockify connections")
    assert not client.log_lines_matching("cannot open a WebSocket")


@pytest.mark.deadline(30)
def test_half_close(bridge):
    """WebSockets have no half-close. Real behaviour: after SHUT_WR adit closes the WebSocket (1000) and
    websockify closes the target connection at once, so
      - everything echoed before the shutdown has been received, then the connection ends with a clean EOF;
      - an echo still in flight at the shutdown is lost (all of it, in practice): what arrives is a prefix
        of what was sent, then EOF - never a hang, a reset or wrong bytes."""
    echo, ws, client, lport = bridge
    # 1. Echo read completely, then SHUT_WR: EOF, nothing more, promptly; the target sees its EOF too.
    with H.connect_local(lport) as s:
        s.settimeout(H.scaled(10))
        data = os.urandom(300 * H.KiB)
        s.sendall(data)
        assert H.recv_exactly(s, len(data)) == data
        t0 = time.monotonic()
        s.shutdown(socket.SHUT_WR)
        how, extra = H.wait_closed(s, timeout=5)
        dt = time.monotonic() - t0
    assert (how, extra) == ("eof", b""), f"after SHUT_WR: {how} with {len(extra)} unexpected bytes"
    assert dt < H.scaled(2.0), f"EOF only {dt:.2f}s after SHUT_WR (promptly: 2 s, scaled {H.scaled(2.0):g} s)"
    echo.wait_results(1, timeout=5, allow_errors=True)
    assert echo.results[0] == len(data)

    # 2. SHUT_WR right after sending: the connection still ends cleanly; the echo may be cut short.
    outcomes = []
    for size in (10, 64 * H.KiB):
        with H.connect_local(lport) as s:
            data = os.urandom(size)
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            t0 = time.monotonic()
            how, got = H.wait_closed(s, timeout=5)
            dt = time.monotonic() - t0
        outcomes.append((size, len(got), how, round(dt, 3)))
        assert how == "eof", f"{size} bytes then SHUT_WR: ended by {how}"
        assert got == data[:len(got)], f"{size} bytes then SHUT_WR: received bytes that are not a prefix of the data"
        assert dt < H.scaled(2.0), f"{size} bytes then SHUT_WR: EOF only after {dt:.2f}s (limit 2 s, scaled)"
    print("SHUT_WR right after sending (size, bytes echoed, end, seconds):", outcomes)

    # the bridge is still fine for the next connection
    with H.connect_local(lport) as s:
        s.settimeout(H.scaled(10))
        s.sendall(b"still fine")
        assert H.recv_exactly(s, 10) == b"still fine"
    assert client.alive()


def _assert_closed_promptly(port: int, limit: float = 2.0) -> tuple[str, float]:
    """Promptly: within `limit` seconds (2 s), times ADIT_E2E_TIMEOUT_SCALE."""
    with H.connect_local(port) as s:
        t0 = time.monotonic()
        try:
            s.sendall(b"early data\n")
        except OSError:
            pass
        how, data = H.wait_closed(s, timeout=limit + 3)
        dt = time.monotonic() - t0
    assert data == b"", f"received {len(data)} bytes on a connection that has no WebSocket"
    assert dt <= H.scaled(limit), f"local connection closed only after {dt:.2f}s ({how}; limit {H.scaled(limit):g}s)"
    return how, dt


@pytest.mark.deadline(30)
def test_websockify_down_then_up(adit, targets, websockify):
    """Nothing listens on the WebSocket port: each local connection is closed at once, and the client logs
    one line for it. Once websockify runs there, new connections work."""
    echo = targets.echo()
    ws_port = H.free_port()
    url = f"ws://127.0.0.1:{ws_port}/"
    client, lport = raw_client(adit, url, bind=True)   # -L BIND:PORT this time
    how, dt = _assert_closed_promptly(lport)
    needle = f"cannot open a WebSocket to {url}"
    line = client.wait_for_log(needle, timeout=5)
    lines = client.log_lines_matching(needle)   # and still one after the echo below: no second line came later
    assert len(lines) == 1, f"expected one line containing {needle!r}, got {lines}"
    assert "refused" in line, line
    print(f"closed by {how} after {dt * 1000:.0f} ms; client logged: {line}")

    ws = websockify.start(echo.port, port=ws_port)
    with H.connect_local(lport) as s:
        s.settimeout(H.scaled(10))
        s.sendall(b"now it works")
        assert H.recv_exactly(s, 12) == b"now it works"
    assert len(client.log_lines_matching(needle)) == 1
    assert websockify_connections(ws) == 1
    assert client.alive()


@pytest.mark.deadline(30)
def test_websockify_target_refused(adit, websockify):
    """websockify accepts the WebSocket but cannot reach its own target: it sends its 101, then at once a
    close (1011, "Failed to connect to downstream server") and FIN; adit closes the local connection promptly.

    Not asserted: the client's log. Usually it has nothing at info level (the 1011 is logged at debug), but
    when the 101, the close frame and the FIN arrive together it says "cannot open a WebSocket ... the server
    closed the connection during the WebSocket upgrade" - see test_raw_client_data_right_after_101 below."""
    dead_target = H.free_port()
    ws = websockify.start(dead_target)
    client, lport = raw_client(adit, ws.url)
    for _ in range(3):
        how, dt = _assert_closed_promptly(lport)
        print(f"closed by {how} after {dt * 1000:.0f} ms")
    H.wait_until(lambda: len(ws.log_lines_matching("Failed to connect to 127.0.0.1:")) == 3, timeout=5,
                 what="websockify's three failed target connections")
    assert client.alive()


@pytest.mark.deadline(30)
def test_websockify_stops_during_a_connection(bridge, websockify):
    """websockify is stopped (SIGTERM) while a connection is open: the local connection ends promptly."""
    echo, ws, client, lport = bridge
    with H.connect_local(lport) as s:
        s.settimeout(H.scaled(10))
        s.sendall(b"hello")
        assert H.recv_exactly(s, 5) == b"hello"
        t0 = time.monotonic()
        websockify.stop(ws)
        how, extra = H.wait_closed(s, timeout=5)
        dt = time.monotonic() - t0
    print(f"websockify stopped: local connection ended by {how} {dt * 1000:.0f} ms after SIGTERM")
    assert extra == b""
    assert dt < H.scaled(3.0), f"ended only {dt:.2f}s after SIGTERM (promptly: 3 s, scaled {H.scaled(3.0):g} s)"
    assert client.alive()
    # and the client reports the next connection's failure like any other
    _assert_closed_promptly(lport)
    client.wait_for_log(f"cannot open a WebSocket to {ws.url}", timeout=5)


# ---------------------------------------------------------------------------
# A scripted server: the 101, a data message, a close frame and FIN in one write


GREETING = b"hello from the server\n"


def _scripted_ws_server(pause: float):
    """Answers the upgrade with 101 (subprotocol binary), then - after `pause` s - a binary message GREETING
    and a close frame (1000), then closes the TCP connection. pause=0: all in one write."""

    def handler(conn: socket.socket, server: H.TargetServer) -> bytes:
        req = b""
        while b"\r\n\r\n" not in req:
            b = conn.recv(4096)
            if not b:
                return b""
            req += b
        key = next(ln.split(b":", 1)[1].strip() for ln in req.split(b"\r\n")
                   if ln.lower().startswith(b"sec-websocket-key:"))
        accept = base64.b64encode(hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest())
        head = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Accept: " + accept + b"\r\nSec-WebSocket-Protocol: binary\r\n\r\n")
        frames = bytes([0x82, len(GREETING)]) + GREETING + b"\x88\x02\x03\xe8"
        if pause:
            conn.sendall(head)
            time.sleep(pause)
            conn.sendall(frames)
        else:
            conn.sendall(head + frames)
        return req          # the TargetServer closes the connection now

    return handler


@pytest.mark.deadline(30)
@pytest.mark.parametrize("pause", [0.05, 0.0], ids=["data-after-a-pause", "data-in-the-same-write-as-the-101"])
def test_raw_client_data_right_after_101(adit, targets, pause):
    """A server may send data right after its 101 and close at once (websockify does the same with its 1011
    when its target refuses). Each local connection must receive the message, then EOF."""
    srv = targets.custom("scripted-ws", _scripted_ws_server(pause))
    url = f"ws://127.0.0.1:{srv.port}/"
    client, lport = raw_client(adit, url)
    got = []
    # Before the client parsed its 101 itself, 35-100 % of such connections lost the message: 40 catch that.
    for _ in range(10 if pause else 40):
        with H.connect_local(lport) as s:
            how, data = H.wait_closed(s, timeout=5)
            got.append((how, data))
    bad = [g for g in got if g != ("eof", GREETING)]
    print(f"{len(got) - len(bad)}/{len(got)} connections got the message and EOF")
    assert not bad, (f"{len(bad)}/{len(got)} local connections did not get the message then EOF, e.g. "
                     f"{bad[:3]}; client log: {client.log_lines_matching('cannot open a WebSocket')[:2]}")
    assert not client.log_lines_matching("cannot open a WebSocket")
