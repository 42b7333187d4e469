"""Documented behaviour of the tunnel's life, end to end: connections held while the tunnel is down
(`--wait-for-tunnel`), the redial backoff (0.5 s doubling) and the "is up again" line; a silent dead peer found by
the keepalive (SIGSTOP, not kill) on either side; SIGINT drains (the server's `--drain-timeout` expiring with
streams open, or ending early when they end; the client finishing its streams); the upgrade headers `-H`,
`--host-header`, `--origin` and `--user-agent` as a WebSocket server receives them; mutual TLS refusing a client
certificate from another CA."""

import re
import signal
import socket
import threading
import time

import pytest

import e2e_helpers as H

SCALE = H.timeout_scale()


class LogWatcher:
    """Records when (monotonic) each new log line containing `needle` appeared, polling every 20 ms."""

    def __init__(self, proc: H.AditProcess, needle: str):
        self.proc, self.needle = proc, needle
        self.seen: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while not self.stop.is_set():
            lines = self.proc.log_lines_matching(self.needle)
            now = time.monotonic()
            for ln in lines[len(self.seen):]:
                self.seen.append((now, ln))
            self.stop.wait(0.02)

    def wait_count(self, n: int, timeout: float) -> list[tuple[float, str]]:
        H.wait_until(lambda: len(self.seen) >= n, timeout, what=f"{n} log lines with {self.needle!r}")
        return self.seen[:n]

    def close(self):
        self.stop.set()
        self.t.join(2)


# ---------------------------------------------------------------------------------------------------------
# Waiting for the tunnel, backoff, "is up again"

@pytest.mark.deadline(60)
def test_a_connection_waits_for_the_tunnel_while_the_client_backs_off(adit, targets):
    echo = targets.echo()
    port = H.free_port()
    local = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{port}", [(local, "127.0.0.1", echo.port)],
                         extra=["--wait-for-tunnel", "30"])
    dials = LogWatcher(client, "cannot reach the tunnel server")
    try:
        held = H.connect_local(local, timeout=10)    # made while no server exists: it must wait, not fail
        held.settimeout(30 * SCALE)
        held.sendall(b"sent before the tunnel existed")
        seen = dials.wait_count(3, 15)
        delays = [float(re.search(r"retrying in ([\d.]+) s", ln).group(1)) for _, ln in seen]
        assert abs(delays[0] - 0.5) <= 0.1, delays
        assert all(1.6 <= b / a <= 2.4 for a, b in zip(delays, delays[1:])), f"the delays do not double: {delays}"
        gaps = [b[0] - a[0] for a, b in zip(seen, seen[1:])]
        assert all(0.8 * d <= g <= 1.2 * d + 1.0 * SCALE for g, d in zip(gaps, delays)), \
            f"redialled after {gaps} s, announced {delays} s (plus up to 20 % jitter)"
        third_at = seen[2][0]
        server = adit.server([f"127.0.0.1:{echo.port}"], port=port)
        up = client.wait_for_log(f"tunnel to ws://127.0.0.1:{port}/ is up again", timeout=15)
        up_after = time.monotonic() - third_at
        assert up_after >= 0.8 * delays[2], f"up {up_after:.2f}s after announcing a {delays[2]} s wait"
        assert "connection refused" in seen[0][1] and f"is adit server running on 127.0.0.1:{port}" in seen[0][1]
        # The held connection went through once the tunnel was up, with what it sent while waiting.
        msg = b"sent before the tunnel existed"
        assert H.recv_exactly(held, len(msg)) == msg
        held.close()
        assert up

        # Lost and back: "tunnel lost: …; reconnecting in 0.5 s", then "is up again" once more.
        mark = client.log_mark()
        server.signal(signal.SIGKILL)
        server.popen.wait(10)
        lost = client.wait_for_log("tunnel lost", timeout=10, since=mark)
        assert "reconnecting in 0.5 s" in lost, lost
        adit.server([f"127.0.0.1:{echo.port}"], port=port)
        client.wait_for_log("is up again", timeout=15, since=mark)
        H.wait_tunnel_ready(local, timeout=15, proc=client)
    finally:
        dials.close()


@pytest.mark.deadline(40)
def test_wait_for_tunnel_expires_with_a_reset(adit, targets):
    echo = targets.echo()
    local = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{H.free_port()}", [(local, "127.0.0.1", echo.port)],
                         extra=["--wait-for-tunnel", "2"])
    t0 = time.monotonic()
    how, data = H.refused_locally(local, timeout=20, send=b"anyone?")
    waited = time.monotonic() - t0
    assert (how, data) == ("reset", b""), (how, data)
    assert 1.8 <= waited <= 2 + 6 * SCALE, f"refused after {waited:.2f}s with --wait-for-tunnel 2"
    assert client.alive()


class Unanswering:
    """A tunnel "server" that never answers: "tcp", a listener whose backlog is full (the SYN is dropped, the
    connect hangs), or "upgrade", a listener that accepts and reads the upgrade request but never replies."""

    def __init__(self, kind: str):
        self.socks = []
        if kind == "tcp":
            lst, fillers = H.silent_port()
            self.socks = [lst, *fillers]
            self.port = lst.getsockname()[1]
        else:
            lst = socket.socket()
            lst.bind(("127.0.0.1", 0))
            lst.listen(16)
            self.socks = [lst]
            self.port = lst.getsockname()[1]

    def close(self):
        for s in self.socks:
            s.close()


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind,said", [("tcp", "connection timed out"),
                                       ("upgrade", "did not complete the WebSocket upgrade within 2 s")])
def test_client_connect_timeout_bounds_the_tcp_connect_and_the_upgrade(adit, kind, said):
    """`adit client --connect-timeout`: seconds to wait for the server's TCP connection and for the WebSocket
    upgrade (the default is 10 s)."""
    peer = Unanswering(kind)
    try:
        client = adit.client(f"ws://127.0.0.1:{peer.port}/", [(H.free_port(), "127.0.0.1", 9)],
                             extra=["--connect-timeout", "2"])
        t0 = time.monotonic()
        line = client.wait_for_log("cannot reach the tunnel server", timeout=15)
        took = time.monotonic() - t0
        assert said in line, line
        assert 1.5 <= took <= 2 + 3 * SCALE, f"the dial failed after {took:.2f}s with --connect-timeout 2: {line}"
    finally:
        peer.close()


@pytest.mark.deadline(40)
@pytest.mark.parametrize("kind", ["tcp", "upgrade"])
def test_client_sigterm_while_dialling_exits_0(adit, kind):
    """SIGTERM is a clean shutdown (exit 0) in every state, also while a dial to the server is pending."""
    peer = Unanswering(kind)
    try:
        client = adit.client(f"ws://127.0.0.1:{peer.port}/", [(H.free_port(), "127.0.0.1", 9)])
        time.sleep(1.0)   # the dial is under way (its timeout is 10 s)
        assert client.alive()
        client.signal(signal.SIGTERM)
        try:
            client.popen.wait(5 * SCALE)
        except Exception:
            client.kill()
            pytest.fail(f"the client was still running 5 s after SIGTERM, with a dial pending ({kind}); log:\n"
                        f"{client.log_tail()}")
        assert client.returncode == 0, client.returncode
    finally:
        peer.close()


# ---------------------------------------------------------------------------------------------------------
# Keepalive: a peer that is there but silent (SIGSTOP)

@pytest.mark.deadline(60)
@pytest.mark.parametrize("silent", ["server", "client"])
def test_keepalive_finds_a_silent_dead_peer(adit, targets, silent):
    """--keepalive 2 --keepalive-timeout 3 on the side that watches: it PINGs every 2 s, and a session that hears
    nothing within 3 s after a PING is dead (docs/protocol.md §3.3), so within 2 + 3 s of the last answer. The other side is stopped (SIGSTOP) right after it answered a PING,
    so its TCP connection stays up, only the keepalive can tell, and the silence starts at the SIGSTOP. The tunnel
    runs over a path with a 100 ms round trip (a delaying relay), as a real network has."""
    echo = targets.echo()
    keep = ["--keepalive", "2", "--keepalive-timeout", "3", "--log-level", "debug"]    # debug: the watcher logs each PONG's round trip
    port = H.free_port()
    server = adit._start("server", ["--listen", f"127.0.0.1:{port}", "--allow", f"127.0.0.1:{echo.port}",
                                    *(keep if silent == "client" else [])], log_level_arg=silent != "client")
    H.wait_for_port(port, timeout=10, proc=server, connect=False)
    path = H.FaultRelay(port, delay=0.05)
    try:
        local = H.free_port()
        client = adit._start("client", [f"ws://127.0.0.1:{path.port}/",
                                        "-L", f"127.0.0.1:{local}:127.0.0.1:{echo.port}",
                                        *(keep if silent == "server" else [])], log_level_arg=silent != "server")
        H.wait_tunnel_ready(local, timeout=15, proc=client)
        stopped, watcher = (server, client) if silent == "server" else (client, server)
        needle = "tunnel lost" if silent == "server" else "tunnel closed"
        mark = watcher.log_mark()
        watcher.wait_for_log("tunnel round trip", timeout=10, since=mark)   # a PONG just came in
        stopped.signal(signal.SIGSTOP)
        t0 = time.monotonic()
        try:
            line = watcher.wait_for_log(needle, timeout=6 + 10, since=mark)
            found_after = time.monotonic() - t0
            print(f"{watcher.name} declared the tunnel dead {found_after:.2f}s after the last PONG: {line}")
            assert "stopped answering keepalive pings" in line, line
            assert found_after >= 3.0, f"declared dead after {found_after:.2f}s, before a 3 s keepalive timeout"
            assert found_after <= 2 + 3 + 1 * SCALE, (f"declared dead only {found_after:.2f}s after the last PONG, "
                                                      f"more than --keepalive 2 + --keepalive-timeout 3 (docs/protocol.md §3.3)")
        finally:
            stopped.signal(signal.SIGCONT)
        assert watcher.alive() and stopped.alive()
        # Once the stopped side runs again, the client builds a new tunnel.
        H.wait_tunnel_ready(local, timeout=20, proc=client)
    finally:
        path.stop()


# ---------------------------------------------------------------------------------------------------------
# SIGINT drains

def draining_tunnel(adit, echo, drain_timeout: int):
    """A server with --drain-timeout, a client with one forward to `echo`, the tunnel checked by an echo."""
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--drain-timeout", str(drain_timeout)])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    return server, local


def echo_once(sock: socket.socket, msg: bytes) -> None:
    sock.sendall(msg)
    assert H.recv_exactly(sock, len(msg)) == msg


@pytest.mark.deadline(45)
def test_server_sigint_drain_timeout_cuts_the_streams_still_open(adit, targets):
    echo = targets.echo()
    server, local = draining_tunnel(adit, echo, 2)
    held = H.connect_local(local)
    held.settimeout(20 * SCALE)
    echo_once(held, b"before")
    server.signal(signal.SIGINT)
    t0 = time.monotonic()
    server.wait_for_log("shutting down: draining 1 tunnel(s)", timeout=5)
    echo_once(held, b"while draining")   # the open stream still works
    H.wait_until(lambda: server.poll() is not None, 2 + 8, what="the server to exit")
    took = time.monotonic() - t0
    assert server.returncode == 0
    assert 1.8 <= took <= 2 + 6 * SCALE, f"exited {took:.2f}s after SIGINT with --drain-timeout 2"
    assert server.log_lines_matching("drain timeout: closing 1 tunnel(s) with streams still open")
    how, _ = H.wait_closed(held, timeout=10)
    assert how == "reset", f"the stream cut by the drain timeout ended by {how}, not an abort"


@pytest.mark.deadline(45)
def test_server_sigint_drain_ends_as_soon_as_the_last_stream_ends(adit, targets):
    echo = targets.echo()
    server, local = draining_tunnel(adit, echo, 30)
    held = H.connect_local(local)
    held.settimeout(20 * SCALE)
    echo_once(held, b"before")
    server.signal(signal.SIGINT)
    server.wait_for_log("shutting down", timeout=5)
    time.sleep(1.0)    # the drain really waits for the stream
    assert server.alive(), "the server exited with a stream still open and 29 s of drain left"
    echo_once(held, b"still here")
    held.shutdown(socket.SHUT_WR)
    assert H.recv_until_eof(held) == b""
    held.close()
    t0 = time.monotonic()
    H.wait_until(lambda: server.poll() is not None, 10, what="the server to exit once drained")
    assert server.returncode == 0
    assert time.monotonic() - t0 < 8 * SCALE
    assert not server.log_lines_matching("drain timeout")


@pytest.mark.deadline(45)
def test_client_sigint_finishes_open_streams_and_refuses_new_ones(adit, targets):
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    held = H.connect_local(t.ports[0])
    held.settimeout(20 * SCALE)
    echo_once(held, b"before")
    t.client.signal(signal.SIGINT)
    H.wait_until(lambda: not H.port_listening(t.ports[0]), 10, what="the client to close its listener")
    assert t.client.alive(), "the client exited with a stream still open"
    echo_once(held, b"while the client drains")
    held.shutdown(socket.SHUT_WR)
    assert H.recv_until_eof(held) == b""
    held.close()
    H.wait_until(lambda: t.client.poll() is not None, 10, what="the client to exit once drained")
    assert t.client.returncode == 0


@pytest.mark.deadline(45)
@pytest.mark.parametrize("kind", ["client", "server"])
def test_a_second_signal_exits_at_once(adit, targets, kind):
    """Ctrl-C twice: the first drains (up to --drain-timeout, here 30 s), the second exits now, with 1."""
    echo = targets.echo()
    server, local = draining_tunnel(adit, echo, 30)
    held = H.connect_local(local)
    held.settimeout(20 * SCALE)
    echo_once(held, b"before")
    proc = server if kind == "server" else next(p for p in adit.procs if p.name.startswith("adit-client"))
    proc.signal(signal.SIGINT)
    if kind == "server":
        proc.wait_for_log("shutting down: draining 1 tunnel(s)", timeout=5)
    else:
        H.wait_until(lambda: not H.port_listening(local), 10, what="the client to close its listener")
    assert proc.alive(), "the first signal did not wait for the open stream"
    proc.signal(signal.SIGINT)
    H.wait_until(lambda: proc.poll() is not None, 3, what=f"the {kind} to exit on the second signal")
    assert proc.returncode == 1
    assert proc.log_lines_matching("second signal: exiting now")


# ---------------------------------------------------------------------------------------------------------
# Upgrade headers, as a WebSocket server receives them

@pytest.mark.deadline(30)
def test_host_header_origin_and_extra_headers_arrive_at_the_server(adit, targets):
    from websockets.sync.server import serve
    requests = []

    def record(connection, request):
        requests.append(request)
        return None

    def handler(ws):   # a minimal adit.v1 peer: HELLO, then hold the session until the client goes
        ws.send(H.mux_hello(features=0x3))
        try:
            for _ in ws:
                pass
        except Exception:
            pass

    server = serve(handler, "127.0.0.1", 0, subprotocols=["adit.v1"], compression=None, process_request=record)
    th = threading.Thread(target=server.serve_forever, daemon=True)
    th.start()
    try:
        port = server.socket.getsockname()[1]
        client = adit.client(f"ws://127.0.0.1:{port}/tunnel", [(H.free_port(), "127.0.0.1", 9)],
                             extra=["-H", "X-Team: ops", "--header", "Authorization: Bearer abc123",
                                    "--host-header", "tunnel.example.com", "--origin", "https://portal.example.com",
                                    "--user-agent", "Mozilla/5.0 (adit e2e)"])
        client.wait_for_log(f"tunnel to ws://127.0.0.1:{port}/tunnel is up", timeout=15)
        req = requests[0]
        h = req.headers
        assert req.path == "/tunnel"
        assert h["Host"] == "tunnel.example.com", h["Host"]
        assert h["Origin"] == "https://portal.example.com", h.get("Origin")
        assert h["X-Team"] == "ops" and h["Authorization"] == "Bearer abc123", dict(h.raw_items())
        assert h["User-Agent"] == "Mozilla/5.0 (adit e2e)", h.get("User-Agent")
        assert h["Sec-WebSocket-Protocol"] == "adit.v1"
        # Without the options: the URL's authority as Host, no Origin.
        plain = adit.client(f"ws://127.0.0.1:{port}/", [(H.free_port(), "127.0.0.1", 9)])
        plain.wait_for_log("is up", timeout=15)
        h2 = requests[1].headers
        assert h2["Host"] == f"127.0.0.1:{port}" and "Origin" not in h2 and "X-Team" not in h2, dict(h2.raw_items())
    finally:
        server.shutdown()
        th.join(5)


# ---------------------------------------------------------------------------------------------------------
# Mutual TLS: a client certificate from another CA is refused

@pytest.mark.deadline(60)
def test_mtls_refuses_a_client_certificate_from_another_ca(adit, targets, adit_bin, tmp_path):
    from test_tls import keygen
    echo = targets.echo()
    cert, key, _, _ = keygen(adit_bin, tmp_path, "server", "--name", "localhost", "--ip", "127.0.0.1")
    trusted_cert, trusted_key, _, _ = keygen(adit_bin, tmp_path, "trusted", "--name", "alice.clients")
    other_cert, other_key, _, _ = keygen(adit_bin, tmp_path, "other", "--name", "alice.clients")  # same name, other CA
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--tls-cert", str(cert), "--tls-key", str(key),
                                                             "--tls-ca", str(trusted_cert)])

    def client(c, k, ready):
        local = H.free_port()
        proc = adit.client(f"wss://127.0.0.1:{server.port}/", [(local, "127.0.0.1", echo.port)],
                           extra=["--ca-file", str(cert), "--tls-cert", str(c), "--tls-key", str(k)])
        if ready:
            H.wait_tunnel_ready(local, timeout=15, proc=proc)
        return proc, local

    client(trusted_cert, trusted_key, True)   # the CA's own client gets in
    accepted = echo.accepted
    mark = server.log_mark()
    stranger, local = client(other_cert, other_key, False)
    line = stranger.wait_for_log("cannot reach the tunnel server", timeout=15)
    assert "TLS" in line, line
    refused = server.wait_for_log("TLS handshake with a client failed", timeout=10, since=mark)
    assert "certificate" in refused.lower(), refused
    assert not stranger.log_lines_matching("is up")
    assert not server.log_lines_matching("tunnel opened", since=mark)
    assert echo.accepted == accepted, "a client with a certificate from another CA reached the target"
