"""Limits (issue 8), each hit and recovered: tunnels per client address and per user (429 before the 101),
the handshake timeout against a slow client, and an idle tunnel closed by --idle-timeout."""

import base64
import os
import socket
import time
import urllib.request

import pytest

import e2e_helpers as H
from test_identities import make_token, raw_upgrade, users_file


def scrape(port):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines() if ln and not ln.startswith("#")}


@pytest.mark.deadline(60)
def test_tunnels_per_address_are_limited_and_the_slot_comes_back(adit, targets):
    echo = targets.echo()
    metrics = H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--max-sessions-per-address", "2",
                                                            "--metrics", f"127.0.0.1:{metrics}"])
    first = [adit.client(server.url, [(p, "127.0.0.1", echo.port)]) for p in (H.free_port(), H.free_port())]
    server.wait_for_log("tunnel opened", timeout=10)
    H.wait_until(lambda: len(server.log_lines_matching("tunnel opened")) == 2, 10, what="two tunnels")
    status, head = raw_upgrade(server.port, [("Sec-WebSocket-Protocol", "adit.v1")])
    assert " 429 " in status, status
    server.wait_for_log("tunnel refused (429)", timeout=5)
    assert scrape(metrics).get('adit_limit_hits_total{limit="sessions_per_address"}', 0) >= 1
    first[0].stop()
    H.wait_until(lambda: " 101 " in raw_upgrade(server.port, [("Sec-WebSocket-Protocol", "adit.v1")])[0], 10,
                 what="a slot to come back after a tunnel closed")


@pytest.mark.deadline(60)
def test_a_users_own_session_limit(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    token, digest = make_token(adit_bin, "alice")
    path = tmp_path / "users.yaml"
    users_file(path, [{"name": "alice", "token": digest}])
    path.write_text(path.read_text() + "    limits: { sessions: 1 }\n")
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(path)])
    auth = [("Sec-WebSocket-Protocol", "adit.v1"), ("Authorization", f"Bearer {token}")]
    s = socket.create_connection(("127.0.0.1", server.port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: adit.v1\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
    assert b" 101 " in s.recv(4096)
    status, _ = raw_upgrade(server.port, auth)
    assert " 429 " in status, status
    assert "alice" in server.wait_for_log("tunnel refused (429)", timeout=5)
    s.close()
    H.wait_until(lambda: " 101 " in raw_upgrade(server.port, auth)[0], 10, what="alice's slot to come back")


@pytest.mark.deadline(60)
def test_a_slow_client_is_cut_at_the_handshake_timeout(adit, targets):
    metrics = H.free_port()
    server = adit.server(["127.0.0.1:9"], extra=["--handshake-timeout", "1", "--metrics", f"127.0.0.1:{metrics}"])
    s = socket.create_connection(("127.0.0.1", server.port))
    s.sendall(b"GET / HTTP/1.1\r\nHost: slow\r\n")   # and never the rest
    H.wait_closed(s, timeout=H.scaled(10))
    server.wait_for_log("no complete upgrade request within 1 s", timeout=5)
    H.wait_until(lambda: scrape(metrics).get('adit_limit_hits_total{limit="handshake_timeout"}', 0) >= 1, 10,
                 what="the handshake-timeout counter")


@pytest.mark.deadline(60)
def test_an_idle_tunnel_is_closed_and_the_client_comes_back_when_needed(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--idle-timeout", "2"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    server.wait_for_log("tunnel idle for 2 s", timeout=15)
    client.wait_for_log("the server is draining the tunnel", timeout=10)
    # a new connection still goes through (the client dialled a new tunnel)
    with H.connect_local(local) as s:
        s.settimeout(10)
        s.sendall(b"after idle")
        assert H.recv_exactly(s, 10) == b"after idle"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("flag", ["--max-sessions", "--max-sessions-per-user"])
def test_the_server_wide_and_per_user_session_flags(adit, adit_bin, targets, tmp_path, flag):
    """--max-sessions caps all tunnels; --max-sessions-per-user caps each user's (here without a limit of its own in
    the users file). The third tunnel gets 429; a slot comes back when one closes."""
    echo = targets.echo()
    token, digest = make_token(adit_bin, "carol")
    path = users_file(tmp_path / "users.yaml", [{"name": "carol", "token": digest}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=[flag, "2", "--users", str(path)])
    auth = [("Sec-WebSocket-Protocol", "adit.v1"), ("Authorization", f"Bearer {token}")]
    held = []
    for _ in range(2):
        s = socket.create_connection(("127.0.0.1", server.port))
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: adit.v1\r\nAuthorization: Bearer {token}\r\n\r\n").encode())
        assert b" 101 " in s.recv(4096)
        held.append(s)
    status, _ = raw_upgrade(server.port, auth)
    assert " 429 " in status, f"{flag} 2: the third tunnel got {status}"
    held.pop().close()
    H.wait_until(lambda: " 101 " in raw_upgrade(server.port, auth)[0], 10, what="a slot to come back")
    for s in held:
        s.close()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("path", ["/metrics", "/status", "/status.json", "/readyz", "/healthz"])
def test_the_tunnel_port_never_serves_the_admin_pages(adit, path):
    """Metrics and status live on --metrics/--admin only, which operators keep private: the public tunnel port
    answers them as any plain HTTP request (426), revealing nothing."""
    admin = H.free_port()
    server = adit.server(["127.0.0.1:9"], extra=["--admin", f"127.0.0.1:{admin}"])
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        answer = H.recv_until_eof(s)
    assert answer.startswith(b"HTTP/1.1 426"), answer[:100]
    for secret in (b"adit_", b"sessions", b"# HELP", b"ready"):
        assert secret not in answer.split(b"\r\n\r\n", 1)[1].lower().replace(b"upgrade", b""), answer
    # while the admin listener does serve it
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=5) as resp:
        assert resp.status == 200


@pytest.mark.deadline(60)
def test_a_users_own_stream_limit(adit, adit_bin, targets, tmp_path):
    """limits.streams in the users file: the user's third concurrent stream is reset ("resource limit"); one
    more fits once one ends."""
    echo = targets.echo()
    token, digest = make_token(adit_bin, "dave")
    path = users_file(tmp_path / "users.yaml", [{"name": "dave", "token": digest}])
    path.write_text(path.read_text() + "    limits: { streams: 2 }\n")
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(path)])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)], env={"ADIT_TOKEN": token})
    held = []
    for _ in range(2):
        s = H.connect_local(local, timeout=10)
        s.settimeout(H.scaled(10))
        s.sendall(b"ping")
        assert H.recv_exactly(s, 4) == b"ping"
        held.append(s)
    assert H.refused_locally(local, send=b"third") == ("reset", b""), "a third stream got through limits.streams 2"
    client.wait_for_log("resource limit", timeout=10)
    held.pop().close()
    H.wait_until(lambda: H.make_probe(local), timeout=10, what="a stream to fit again once one ended")
    for s in held:
        s.close()


@pytest.mark.deadline(90)
def test_256_reverse_listeners_per_tunnel(adit, targets):
    """A tunnel may hold 256 -R listeners on the server; the 257th is refused, naming the limit."""
    echo = targets.echo()
    server = adit.server([], extra=["--allow-reverse", "127.0.0.1:*"])
    args = []
    for _ in range(257):
        args += ["-R", f"127.0.0.1:0:127.0.0.1:{echo.port}"]
    client = adit.client(server.url, [], extra=args)
    line = client.wait_for_log("more than 256 listeners on this tunnel", timeout=30)
    print(line)
    H.wait_until(lambda: len(client.log_lines_matching("the server listens on")) >= 256, timeout=30,
                 what="256 listeners to be up")
    assert len(client.log_lines_matching("more than 256 listeners")) >= 1
    time.sleep(0.5)   # (a 257th would have been logged by now)
    assert len(client.log_lines_matching("the server listens on")) == 256
    assert client.alive() and server.alive()


@pytest.mark.deadline(90)
def test_the_default_stream_limit_follows_the_open_file_limit(adit, targets, tmp_path):
    """Without --max-streams a tunnel carries at most 3/4 of the open-file limit: at nofile 200 the server takes
    150 streams, and the next is reset with "resource limit" instead of failing on descriptors."""
    from test_gauntlet import prlimited
    echo = targets.echo()
    port = H.free_port()
    server = H.AditProcess("adit-server-limited",
                           prlimited([str(adit.bin), "server", "--listen", f"127.0.0.1:{port}",
                                      "--allow", f"127.0.0.1:{echo.port}"], 200),
                           tmp_path / "adit-server-limited.log").start()
    adit.procs.append(server)
    H.wait_for_port(port, timeout=10, proc=server, connect=False)
    local = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{port}", [(local, "127.0.0.1", echo.port)])
    held = []
    try:
        for k in range(150):
            s = H.connect_local(local, timeout=10)
            s.settimeout(H.scaled(10))
            s.sendall(b"x")
            assert H.recv_exactly(s, 1) == b"x", f"stream {k + 1} of 150 failed"
            held.append(s)
        assert H.refused_locally(local, send=b"y") == ("reset", b""), "stream 151 got through at nofile 200"
        client.wait_for_log("resource limit", timeout=10)
    finally:
        for s in held:
            s.close()
    assert server.alive()
