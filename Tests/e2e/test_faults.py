"""Faults (issue 11): kill -9 of the client, the server or the target at random points of a transfer; a link that
is cut silently; a lossy, delayed link; a target that resets, through every front. After each: no hang, every
byte the application received is the sender's (SHA-256 of the prefix), a stream cut short ends in an error and
never in a clean end of file, the survivors hold no extra descriptors, and the tunnel comes back.

This kernel has no netem: `H.FaultRelay` is a user-space link that delays (with jitter), stalls at random (what loss
looks like to TCP: a retransmission wait), and can be cut silently (a blackhole)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

import e2e_helpers as H

HOLD = ["--wait-for-tunnel", str(int(H.scaled(30)))]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def settle_fds(proc: H.AditProcess, baseline: int, slack: int = 2, timeout: float = 10) -> int:
    """Waits until `proc` holds no more than baseline + slack descriptors; returns the count."""
    deadline = time.monotonic() + H.scaled(timeout)
    while True:
        n = fd_count(proc.pid)
        if n <= baseline + slack or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


SOURCE_SCRIPT = r"""
import random, socket, sys
total, seed = int(sys.argv[1]), int(sys.argv[2])
data = random.Random(seed).randbytes(total)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0)); srv.listen(8)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    try:
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)
    except OSError:
        pass
    c.close()
"""


class SourceProcess:
    """A target in a process of its own (so it can be killed with -9) that sends `total` seeded random bytes
    to each connection, then ends it."""

    def __init__(self, total: int, seed: int):
        self.total, self.seed = total, seed
        self.data = random.Random(seed).randbytes(total)
        self.popen = subprocess.Popen([sys.executable, "-c", SOURCE_SCRIPT, str(total), str(seed)],
                                      stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.port = int(self.popen.stdout.readline())

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)


def download(port: int, on_progress, pace: float = 0.001) -> tuple[str, bytes]:
    """Reads a local forward to its end: ("eof"|"reset"|"hang", bytes); calls on_progress(received) as it goes.
    Sleeps `pace` after each read, so that the tunnel is held back by flow control and the rest of the data is
    still at the sender when a fault strikes."""
    data = bytearray()
    try:
        s = H.connect_local(port, timeout=10)
    except ConnectionResetError:
        return "reset", b""
    with s:
        s.settimeout(H.scaled(15))
        while True:
            try:
                chunk = s.recv(256 * H.KiB)
            except (ConnectionResetError, BrokenPipeError):
                return "reset", bytes(data)
            except socket.timeout:
                return "hang", bytes(data)
            if not chunk:
                return "eof", bytes(data)
            data += chunk
            on_progress(len(data))
            time.sleep(pace)


def test_random_kills_never_pass_truncation_off_as_success(adit, targets):
    seed = int(os.environ.get("ADIT_E2E_FAULT_SEED", random.randrange(1 << 30)))
    rng = random.Random(seed)
    print(f"fault seed {seed} (ADIT_E2E_FAULT_SEED={seed} repeats this run)")
    total = 64 * H.MiB
    outcomes = []
    for round_ in range(6):
        victim = ["server", "client", "target"][round_ % 3]
        # Far enough from the end that the rest cannot all be in buffers and windows yet (the reader is paced).
        at = rng.randrange(H.MiB, total - 24 * H.MiB)
        source = SourceProcess(total, seed + round_)
        try:
            t = adit.tunnel([source.port], client_extra=HOLD)
            server_fds = fd_count(t.server.pid)
            client_fds = fd_count(t.client.pid)
            killed = threading.Event()

            def on_progress(n: int) -> None:
                if n < at or killed.is_set():
                    return
                killed.set()
                if victim == "target":
                    source.kill()
                else:
                    (t.server if victim == "server" else t.client).signal(signal.SIGKILL)

            t0 = time.monotonic()
            how, got = download(t.ports[0], on_progress)
            outcomes.append((victim, at, how, len(got), round(time.monotonic() - t0, 2)))
            assert how != "hang", f"round {round_} ({victim} killed at {at} B): the application hung with {len(got)} B"
            assert killed.is_set(), f"round {round_}: the transfer ended at {len(got)} B before the fault at {at} B"
            assert len(got) < total, f"round {round_} ({victim}): all {total} B arrived although the fault came at {at} B"
            assert hashlib.sha256(got).digest() == hashlib.sha256(source.data[:len(got)]).digest(), \
                f"round {round_} ({victim}): the {len(got)} B received are not the source's bytes"
            if victim == "server":
                # The tunnel died under the stream: the application must see an abort, never a clean end.
                assert how == "reset" or len(got) == total, \
                    f"round {round_}: server killed at {at} B, the application got a clean EOF at {len(got)} of {total} B"
                assert t.client.alive()
                # The tunnel comes back when a server listens on the port again.
                restarted = adit._start("server", t.server.argv[2:], log_level_arg=False)
                restarted.wait_for_log("listening on", timeout=10)
                H.wait_tunnel_ready(t.probe_port, timeout=20, proc=t.client)
                assert H.make_probe(t.probe_port)
            elif victim == "client":
                # The application's socket was the client's: its kernel ended it. The server lets go of everything.
                assert t.server.alive()
                assert settle_fds(t.server, server_fds) <= server_fds + 2, "the server kept the dead client's descriptors"
            else:
                # The target died: a direct connection would see its kernel's end too. The tunnel lives on.
                assert t.client.alive() and t.server.alive()
                assert H.make_probe(t.probe_port), "the tunnel did not survive its target's death"
                assert settle_fds(t.server, server_fds) <= server_fds + 2, "the server kept the dead target's descriptors"
                assert settle_fds(t.client, client_fds) <= client_fds + 2, "the client kept the dead stream's descriptors"
        finally:
            source.kill()
            for p in reversed(adit.procs):
                p.stop()
    print("victim, killed at, ended by, bytes, seconds:", outcomes)


def test_a_silently_cut_link_is_found_and_its_streams_abort(adit, targets, blob):
    source = targets.source(blob, 1 << 40, seed=3)      # endless: only the fault ends it
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{source.port}", f"127.0.0.1:{echo.port}"])
    relay = H.FaultRelay(server.port)
    try:
        local, probe = H.free_port(), H.free_port()
        client = adit.client(f"ws://127.0.0.1:{relay.port}", [(local, "127.0.0.1", source.port), (probe, "127.0.0.1", echo.port)],
                             extra=["--keepalive", "1", "--keepalive-timeout", "2", *HOLD])
        H.wait_tunnel_ready(probe, timeout=15, proc=client)
        s = H.connect_local(local, timeout=10)
        s.settimeout(H.scaled(20))
        got = 0
        while got < 4 * H.MiB:
            n = len(s.recv(256 * H.KiB))
            assert n, "the stream ended before the cut"
            got += n
        mark = client.log_mark()
        relay.blackhole()
        cut_at = time.monotonic()
        how = None
        while how is None:
            try:
                if not s.recv(256 * H.KiB):
                    how = "eof"
            except (ConnectionResetError, BrokenPipeError):
                how = "reset"
            except socket.timeout:
                how = "hang"
        found_after = time.monotonic() - cut_at
        s.close()
        print(f"the silent cut was found after {found_after:.1f}s; the stream ended by {how}")
        assert how == "reset", f"a stream whose tunnel was cut silently ended by {how}, not an abort"
        assert found_after <= H.scaled(1 + 2 + 3), f"a dead tunnel took {found_after:.1f}s to find (keepalive 1 s + 2 s)"
        client.wait_for_log("tunnel lost", timeout=5, since=mark)
        # new connections pass the relay again: the client redials and carries streams
        H.wait_tunnel_ready(probe, timeout=20, proc=client)
        assert H.make_probe(probe)
    finally:
        relay.stop()


def test_a_lossy_delayed_link_delivers_every_byte(adit, targets, blob):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    relay = H.FaultRelay(server.port, delay=0.005, jitter=0.01, stall_p=0.03, stall=(0.05, 0.3), seed=11)
    try:
        local = H.free_port()
        client = adit.client(f"ws://127.0.0.1:{relay.port}", [(local, "127.0.0.1", echo.port)])
        H.wait_tunnel_ready(local, timeout=20, proc=client)
        size = 8 * H.MiB
        results = {}

        def one(k: int) -> None:
            with H.connect_local(local, timeout=10) as s:
                s.settimeout(H.scaled(60))
                sent = {}
                th = threading.Thread(target=lambda: sent.update(v=H.send_blob(s, blob, size, seed=40 + k)), daemon=True)
                th.start()
                results[k] = (H.recv_all_hash(s), th)

        threads = [threading.Thread(target=one, args=(k,), daemon=True) for k in range(4)]
        for th in threads:
            th.start()
        H.join_all(threads, timeout=120)
        for k in range(4):
            got, sender = results[k]
            sender.join(10)
            assert got == blob.digest(size, seed=40 + k), f"stream {k}: the bytes differ after the lossy link"
        print(f"4 x {size // H.MiB} MiB each way through a link that stalled {relay.stalls} times")
        assert relay.stalls > 10, "the link was not lossy enough to test anything"
    finally:
        relay.stop()


# --- a target that resets, through every front --------------------------------------------------------------

def _send_then_reset(conn: socket.socket, server: H.TargetServer) -> int:
    conn.sendall(b"r" * 100_000)
    time.sleep(0.2)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    return 0


def _socks5_connect(port: int, target_port: int) -> socket.socket:
    s = H.connect_local(port, timeout=10)
    s.sendall(b"\x05\x01\x00")
    assert H.recv_exactly(s, 2) == b"\x05\x00"
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + target_port.to_bytes(2, "big"))
    reply = H.recv_exactly(s, 10)
    assert reply[1] == 0, f"SOCKS reply {reply[1]}"
    return s


def _http_connect(port: int, target_port: int) -> socket.socket:
    s = H.connect_local(port, timeout=10)
    s.sendall(f"CONNECT 127.0.0.1:{target_port} HTTP/1.1\r\nHost: 127.0.0.1:{target_port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        assert b, "the proxy closed before answering"
        head += b
    assert head.startswith(b"HTTP/1.1 200"), head
    return s


@pytest.mark.parametrize("front", ["-L", "-D", "--http-proxy"])
def test_a_target_reset_reaches_the_application_as_a_reset(adit, targets, front):
    target = targets.custom("resetter", _send_then_reset)
    server = adit.server([f"127.0.0.1:{target.port}"])
    port = H.free_port()
    if front == "-L":
        client = adit.client(server.url, [(port, "127.0.0.1", target.port)])
        connect = lambda: H.connect_local(port, timeout=10)  # noqa: E731
    else:
        client = adit.client(server.url, [], extra=[front, f"127.0.0.1:{port}"])
        H.wait_for_port(port, timeout=10, proc=client, connect=False)
        connect = (lambda: _socks5_connect(port, target.port)) if front == "-D" else (lambda: _http_connect(port, target.port))
    deadline = time.monotonic() + H.scaled(15)
    while True:     # the first stream may be held until the tunnel is up
        try:
            s = connect()
            break
        except (AssertionError, OSError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    with s:
        s.settimeout(H.scaled(10))
        how, data = H.wait_closed(s, timeout=10)
    assert data == b"r" * len(data), "bytes other than the target's arrived"
    assert how == "reset", f"{front}: the target reset after {len(data)} B, the application saw {how}"
    assert client.alive() and server.alive()


def test_the_proxy_killed_mid_transfer_aborts_the_stream(adit, targets, tmp_path):
    """kill -9 of the HTTP proxy the tunnel goes through (tinyproxy): for the application, the same as losing
    the server — an abort, never a clean end, and the client keeps trying."""
    from proxies import Tinyproxy
    proxy = Tinyproxy(tmp_path, basic=False)
    source = SourceProcess(64 * H.MiB, seed=5)
    try:
        server = adit.server([f"127.0.0.1:{source.port}"])
        local = H.free_port()
        client = adit.client(server.url, [(local, "127.0.0.1", source.port)], extra=["--proxy", proxy.url, *HOLD])
        killed = threading.Event()
        mark = client.log_mark()

        def on_progress(n: int) -> None:
            if n >= 8 * H.MiB and not killed.is_set():
                killed.set()
                os.killpg(proxy.proc.pid, signal.SIGKILL)

        deadline = time.monotonic() + H.scaled(15)
        while True:   # the first connection waits for the tunnel (--wait-for-tunnel)
            how, got = download(local, on_progress)
            if killed.is_set() or time.monotonic() > deadline:
                break
        assert killed.is_set(), f"the download ended ({how}, {len(got)} B) before the proxy was killed"
        assert hashlib.sha256(got).digest() == hashlib.sha256(source.data[:len(got)]).digest()
        assert how == "reset" and len(got) < source.total, \
            f"the proxy died at 8 MiB and the application saw {how} after {len(got)} of {source.total} B"
        client.wait_for_log("tunnel lost", timeout=10, since=mark)
        assert client.alive()
    finally:
        source.kill()
        proxy.proc.wait(10)
        proxy.stop()


def test_the_server_killed_during_its_drain_aborts_the_stream_it_was_finishing(adit):
    """SIGTERM starts a drain (GOAWAY, open streams may finish); a kill -9 in the middle of it must still end
    the application's stream with an abort, not a clean end."""
    source = SourceProcess(64 * H.MiB, seed=9)
    try:
        server = adit.server([f"127.0.0.1:{source.port}"], extra=["--drain-timeout", "60"])
        local = H.free_port()
        client = adit.client(server.url, [(local, "127.0.0.1", source.port)])
        H.wait_for_port(local, timeout=10, proc=client, connect=False)
        events = []

        def on_progress(n: int) -> None:
            if n >= 4 * H.MiB and not events:
                events.append("term")
                server.signal(signal.SIGTERM)
            elif n >= 12 * H.MiB and events == ["term"]:
                events.append("kill")
                server.wait_for_log("draining", timeout=5)
                server.signal(signal.SIGKILL)

        how, got = download(local, on_progress)
        assert events == ["term", "kill"], f"the faults did not both happen ({events}, {len(got)} B)"
        assert hashlib.sha256(got).digest() == hashlib.sha256(source.data[:len(got)]).digest()
        assert how == "reset" and len(got) < source.total, \
            f"killed mid-drain, the application saw {how} after {len(got)} of {source.total} B"
        assert client.alive()
    finally:
        source.kill()


def test_the_server_killed_mid_upload_is_not_taken_for_a_finished_upload(adit, targets, blob):
    """An upload to a sink that answers with the SHA-256 of what it got, once the upload ends: the server dies
    halfway, and the application must get an error, never an answer or a clean end."""
    sink = targets.hash_sink()
    server = adit.server([f"127.0.0.1:{sink.port}"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", sink.port)])
    H.wait_for_port(local, timeout=10, proc=client, connect=False)
    s = H.connect_local(local, timeout=10)
    s.settimeout(H.scaled(15))
    sent = 0
    outcome = None
    try:
        chunk = blob.bytes(256 * H.KiB, 3)
        while sent < 256 * H.MiB:
            s.sendall(chunk)
            sent += len(chunk)
            if sent == 16 * H.MiB:
                server.signal(signal.SIGKILL)
            time.sleep(0.001)
        s.shutdown(socket.SHUT_WR)
        outcome = ("answered", s.recv(200))
    except (ConnectionResetError, BrokenPipeError) as e:
        outcome = ("error", type(e).__name__)
    except socket.timeout:
        outcome = ("hang", sent)
    finally:
        s.close()
    print(f"upload cut by the server's death after {sent >> 20} MiB sent: {outcome}")
    assert outcome[0] == "error", f"the server died mid-upload and the application saw {outcome}"
    assert client.alive()
