"""-D: the client's SOCKS5 proxy (RFC 1928), SOCKS4/4a, RFC 1929 username/password for the local listener,
reply codes that follow the stream's outcome, and connections that wait for the tunnel.

Applications are curl and hand-written Python SOCKS clients; the target is an HTTP/1.1 origin (or an echo
server) in this process on 127.0.0.1 or ::1."""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import subprocess
import time

import pytest

import e2e_helpers as H

MiB = H.MiB
USER, PASSWORD = "app", "l0cal-s3cret"

# RFC 1928 replies
SUCCEEDED, GENERAL_FAILURE, NOT_ALLOWED, NET_UNREACHABLE, HOST_UNREACHABLE, REFUSED, TTL_EXPIRED = range(7)
CURL_SOCKS_ERROR = 97        # curl 7.88: CURLE_PROXY, "Can't complete SOCKS5 connection to HOST. (REPLY)"


# ---------------------------------------------------------------------------------------------------------
# Helpers


def origin(targets, **kw) -> H.HttpOrigin:
    o = H.HttpOrigin(**kw)
    targets.servers.append(o)       # stopped with the other targets at teardown
    return o


def socks_client(adit, allow: list[str], server_extra=(), client_extra=(), env=None, bind="127.0.0.1"):
    """A server with `allow`, a client with -D on a free port; returns (server, client, socks port) once the
    tunnel is up (seen in the client's log: a probe connection would be a stream of its own)."""
    server = adit.server(allow, extra=list(server_extra))
    port = H.free_port()
    b = f"[{bind}]" if ":" in bind else bind
    client = adit.client(server.url, [], extra=["-D", f"{b}:{port}", *client_extra], env=env)
    H.wait_for_port(port, timeout=10, proc=client, connect=False)
    client.wait_for_log("is up", timeout=10)
    return server, client, port


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """curl with its own limit of 20 s and ours of `timeout`, both scaled."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return subprocess.run(["curl", "-sS", "--max-time", f"{H.scaled(20):g}", *args], capture_output=True,
                          timeout=H.scaled(timeout), env=env)


def socks5_open(port: int, host: str = "127.0.0.1", methods: bytes = b"\x00", timeout: float = 20) -> tuple[socket.socket, int]:
    """Connect to a SOCKS5 proxy and send the greeting; returns (socket, the method the proxy chose).
    `timeout` (scaled) is the socket's timeout."""
    s = socket.create_connection((host, port), timeout=H.scaled(timeout))
    s.sendall(bytes([5, len(methods)]) + methods)
    ver, method = H.recv_exactly(s, 2)
    assert ver == 5, f"method selection reply version {ver}"
    return s, method


def socks5_auth(s: socket.socket, user: str, password: str) -> int:
    """RFC 1929 sub-negotiation; returns the status (0 = success)."""
    u, p = user.encode(), password.encode()
    s.sendall(bytes([1, len(u)]) + u + bytes([len(p)]) + p)
    ver, status = H.recv_exactly(s, 2)
    assert ver == 1, f"RFC 1929 reply version {ver}"
    return status


def socks5_connect(s: socket.socket, host: str, port: int) -> int:
    """Send CONNECT (IPv4, IPv6 or domain address by the form of `host`), read the whole reply; returns REP."""
    try:
        ip = ipaddress.ip_address(host)
        addr = (b"\x01" if ip.version == 4 else b"\x04") + ip.packed
    except ValueError:
        addr = b"\x03" + bytes([len(host)]) + host.encode()
    s.sendall(b"\x05\x01\x00" + addr + struct.pack(">H", port))
    ver, rep, rsv, atyp = H.recv_exactly(s, 4)
    assert ver == 5 and rsv == 0, f"malformed reply header {ver} {rep} {rsv} {atyp}"
    if atyp == 1:
        H.recv_exactly(s, 4 + 2)
    elif atyp == 4:
        H.recv_exactly(s, 16 + 2)
    elif atyp == 3:
        H.recv_exactly(s, H.recv_exactly(s, 1)[0] + 2)
    else:
        raise AssertionError(f"reply with address type {atyp}")
    return rep


def socks5_request(port: int, host: str, dport: int, timeout: float = 20) -> tuple[int, socket.socket]:
    s, method = socks5_open(port, timeout=timeout)
    assert method == 0, f"the proxy chose method {method:#x}, not 'no authentication'"
    return socks5_connect(s, host, dport), s


def socks4_request(port: int, host: str, dport: int, user: bytes = b"") -> tuple[int, socket.socket]:
    """SOCKS4 (IPv4 literal) or SOCKS4a (a name, with DSTIP 0.0.0.1); returns (CD, socket)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=H.scaled(20))
    try:
        ip = ipaddress.IPv4Address(host).packed
        tail = b""
    except ValueError:
        ip = b"\x00\x00\x00\x01"
        tail = host.encode() + b"\x00"
    s.sendall(b"\x04\x01" + struct.pack(">H", dport) + ip + user + b"\x00" + tail)
    vn, cd = H.recv_exactly(s, 8)[:2]
    assert vn == 0, f"SOCKS4 reply version {vn}"
    return cd, s


def assert_closed_after_reply(s: socket.socket, timeout: float = 5.0) -> None:
    """After a failure reply the proxy closes the connection (RFC 1928 §6) and sends nothing more."""
    with s:
        how, data = H.wait_closed(s, timeout)
        assert data == b"", f"{len(data)} bytes after a failure reply"


def echo_round_trip(s: socket.socket, msg: bytes) -> None:
    with s:
        s.settimeout(H.scaled(10))
        s.sendall(msg)
        assert H.recv_exactly(s, len(msg)) == msg
        s.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(s) == b"", "the echo target's EOF did not come through"


# ---------------------------------------------------------------------------------------------------------
# curl through -D


@pytest.mark.deadline(30)
def test_curl_socks5_hostname_and_socks5(adit, targets):
    www = origin(targets)
    _, _, port = socks_client(adit, [f"localhost:{www.port}", f"127.0.0.1:{www.port}"])
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", www.url("/text/by-name", host="localhost"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello by-name\n"
    r = curl("--socks5", f"127.0.0.1:{port}", www.url("/text/by-address"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello by-address\n"
    assert [(q.method, q.target) for q in www.requests] == [("GET", "/text/by-name"), ("GET", "/text/by-address")]
    assert www.requests[0].headers["host"] == f"localhost:{www.port}"
    assert www.connections == 2


@pytest.mark.deadline(30)
def test_names_go_to_the_server_unresolved(adit, targets):
    """With only `localhost:PORT` allowed, --socks5-hostname (the name travels) passes and --socks5 (curl
    resolves localhost itself, the server sees an address) is denied by the server's policy."""
    www = origin(targets)
    server, client, port = socks_client(adit, [f"localhost:{www.port}"])
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", www.url("/text/named", host="localhost"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello named\n"
    mark = server.log_mark()
    r = curl("--socks5", f"127.0.0.1:{port}", www.url("/text/resolved", host="localhost"))
    assert r.returncode == CURL_SOCKS_ERROR, (r.returncode, r.stderr)
    assert f"({NOT_ALLOWED})" in r.stderr.decode(), r.stderr
    line = server.wait_for_log("is not allowed by the server's --allow rules", timeout=5, since=mark)
    assert f"localhost:{www.port}" not in line, line
    assert [q.target for q in www.requests] == ["/text/named"]


@pytest.mark.deadline(45)
def test_32_mib_download_through_socks(adit, targets, blob):
    total, seed = 32 * MiB, 7
    www = origin(targets, blob=blob)
    _, _, port = socks_client(adit, [f"localhost:{www.port}"])
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", www.url(f"/blob/{total}/{seed}", host="localhost"))
    assert r.returncode == 0, r.stderr
    assert (len(r.stdout), H.sha256_hex(r.stdout)) == blob.digest(total, seed)


@pytest.mark.deadline(30)
def test_ipv6_target_and_ipv6_listener(adit, targets):
    try:
        www = origin(targets, host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback on this machine: {e}")
    server = adit.server([f"[::1]:{www.port}"])
    p4, p6 = H.free_port(), H.free_port()
    client = adit.client(server.url, [], extra=["-D", f"127.0.0.1:{p4}", "-D", f"[::1]:{p6}"])
    H.wait_for_port(p4, timeout=10, proc=client, connect=False)
    H.wait_for_port(p6, timeout=10, proc=client, connect=False)
    client.wait_for_log("is up", timeout=10)
    for proxy in (f"127.0.0.1:{p4}", f"[::1]:{p6}"):
        r = curl("--socks5-hostname", proxy, www.url("/text/v6"))
        assert r.returncode == 0, (proxy, r.stderr)
        assert r.stdout == b"hello v6\n"
    # ATYP 4 (an IPv6 address) from a raw client, on the IPv6 listener
    s, method = socks5_open(p6, host="::1")
    assert method == 0
    with s:
        assert socks5_connect(s, "::1", www.port) == SUCCEEDED
        s.sendall(b"GET /text/raw6 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = H.recv_until_eof(s)
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"hello raw6\n"), answer
    assert [q.target for q in www.requests] == ["/text/v6", "/text/v6", "/text/raw6"]


# ---------------------------------------------------------------------------------------------------------
# SOCKS4 and SOCKS4a


@pytest.mark.deadline(30)
def test_socks4a_and_socks4(adit, targets):
    echo = targets.echo()
    forbidden = targets.echo()
    _, _, port = socks_client(adit, [f"localhost:{echo.port}", f"127.0.0.1:{echo.port}"])
    cd, s = socks4_request(port, "localhost", echo.port, user=b"someone")       # SOCKS4a: a name
    assert cd == 0x5A, f"SOCKS4a request rejected: {cd:#x}"
    echo_round_trip(s, b"through socks4a " * 100)
    cd, s = socks4_request(port, "127.0.0.1", echo.port)                        # SOCKS4: an address
    assert cd == 0x5A, f"SOCKS4 request rejected: {cd:#x}"
    echo_round_trip(s, bytes(range(256)) * 64)
    cd, s = socks4_request(port, "127.0.0.1", forbidden.port)                   # denied: 0x5B, closed
    assert cd == 0x5B, f"a denied SOCKS4 request got {cd:#x}"
    assert_closed_after_reply(s)
    echo.wait_results(2, timeout=5)
    assert echo.accepted == 2 and forbidden.accepted == 0


# ---------------------------------------------------------------------------------------------------------
# RFC 1929 username/password for the local listener


@pytest.mark.deadline(40)
@pytest.mark.parametrize("source", ["env", "file"])
def test_username_and_password(adit, targets, tmp_path, source):
    www = origin(targets)
    extra, env = H.local_credentials(source, USER, PASSWORD, tmp_path)
    _, client, port = socks_client(adit, [f"localhost:{www.port}"], client_extra=extra, env=env)
    url = www.url("/text/authorized", host="localhost")

    r = curl("--socks5-hostname", f"{USER}:{PASSWORD}@127.0.0.1:{port}", url)
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"hello authorized\n"

    r = curl("--socks5-hostname", f"{USER}:wrong@127.0.0.1:{port}", www.url("/text/wrong", host="localhost"))
    assert r.returncode == CURL_SOCKS_ERROR, (r.returncode, r.stderr)
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", www.url("/text/none", host="localhost"))
    assert r.returncode == CURL_SOCKS_ERROR, (r.returncode, r.stderr)

    # raw: the proxy picks username/password (0x02) among the offered methods, and checks them
    s, method = socks5_open(port, methods=b"\x00\x02")
    assert method == 2, f"offered no-auth and username/password, the proxy chose {method:#x}"
    with s:
        assert socks5_auth(s, USER, PASSWORD) == 0
        assert socks5_connect(s, "localhost", www.port) == SUCCEEDED
    s, method = socks5_open(port, methods=b"\x02")
    assert method == 2
    assert socks5_auth(s, USER, PASSWORD + "x") != 0, "a wrong password was accepted"
    assert_closed_after_reply(s)
    s, method = socks5_open(port, methods=b"\x02")
    assert socks5_auth(s, "mallory", PASSWORD) != 0, "a wrong username was accepted"
    assert_closed_after_reply(s)
    # a client that offers only "no authentication": no acceptable method (0xFF), then closed
    s, method = socks5_open(port, methods=b"\x00")
    assert method == 0xFF, f"credentials are required but the proxy chose {method:#x}"
    assert_closed_after_reply(s)
    # SOCKS4a has no passwords: rejected
    cd, s = socks4_request(port, "localhost", www.port, user=USER.encode())
    assert cd == 0x5B, f"SOCKS4a got through a listener that requires a password: {cd:#x}"
    assert_closed_after_reply(s)

    assert [q.target for q in www.requests] == ["/text/authorized"]
    # connections: curl's, and the raw client's that authenticated (it sent no request)
    H.wait_until(lambda: www.connections >= 2, 5, what="the authenticated raw client's connection at the origin")
    assert www.connections == 2
    assert client.log_lines_matching("wrong username or password")


# ---------------------------------------------------------------------------------------------------------
# Reply codes follow the stream's outcome


@pytest.mark.deadline(30)
@pytest.mark.parametrize("outcome,code", [
    ("denied", NOT_ALLOWED),
    ("refused", REFUSED),
    ("unreachable", HOST_UNREACHABLE),
    ("timed out", TTL_EXPIRED),
])
def test_reply_code_follows_the_outcome(adit, targets, outcome, code):
    listeners: list[socket.socket] = []
    forbidden = None
    try:
        if outcome == "denied":
            forbidden = targets.echo()                          # a real listener, not allowed
            host, dport = "127.0.0.1", forbidden.port
            allow = ["127.0.0.1:1"]
        elif outcome == "refused":
            host, dport = "127.0.0.1", H.free_port()            # allowed, nothing listens
            allow = [f"127.0.0.1:{dport}"]
        elif outcome == "unreachable":
            host, dport = "nonexistent.invalid", 80             # allowed, does not resolve
            allow = ["*.invalid:*"]
        else:
            try:
                lst, fillers = H.silent_port()
            except RuntimeError as e:
                pytest.skip(str(e))
            listeners = [lst, *fillers]
            host, dport = "127.0.0.1", lst.getsockname()[1]
            allow = [f"127.0.0.1:{dport}"]
        server_extra = ["--connect-timeout", "1"] if outcome == "timed out" else []
        _, client, port = socks_client(adit, allow, server_extra=server_extra)

        rep, s = socks5_request(port, host, dport)
        assert rep == code, f"{outcome}: reply {rep:#x}, expected {code:#x}"
        assert_closed_after_reply(s)

        r = curl("--socks5-hostname", f"127.0.0.1:{port}", f"http://{host}:{dport}/")
        assert r.returncode == CURL_SOCKS_ERROR, (r.returncode, r.stderr)
        assert f"({code})" in r.stderr.decode(), r.stderr
        assert len(client.log_lines_matching(f"SOCKS connection to {host}:{dport} failed")) == 2
        if forbidden is not None:
            assert forbidden.accepted == 0, "the server connected to a target its policy denies"
    finally:
        for s in listeners:
            s.close()


# ---------------------------------------------------------------------------------------------------------
# While the tunnel is down


@pytest.mark.deadline(30)
def test_no_tunnel_general_failure_after_wait(adit):
    dead = H.free_port()                                    # no server there
    port = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{dead}", [], extra=["-D", f"127.0.0.1:{port}", "--wait-for-tunnel", "2"])
    H.wait_for_port(port, timeout=10, proc=client, connect=False)
    s, method = socks5_open(port)
    assert method == 0
    t0 = time.monotonic()
    rep = socks5_connect(s, "localhost", 80)
    waited = time.monotonic() - t0
    assert rep == GENERAL_FAILURE, f"no tunnel: reply {rep:#x}, expected general failure"
    # the wait is 2 s; refusing before half of it is a bug, later than 10 s (scaled) too slow
    assert 1.0 <= waited <= H.scaled(10.0), f"refused after {waited:.2f}s with --wait-for-tunnel 2"
    assert_closed_after_reply(s)
    r = curl("--socks5-hostname", f"127.0.0.1:{port}", "http://localhost:80/")
    assert r.returncode == CURL_SOCKS_ERROR and f"({GENERAL_FAILURE})" in r.stderr.decode(), (r.returncode, r.stderr)
    assert client.log_lines_matching("no tunnel to")
    assert client.alive()


@pytest.mark.deadline(40)
def test_connection_made_before_the_tunnel_waits_for_it(adit, targets):
    echo = targets.echo()
    server_port = H.free_port()
    port = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{server_port}", [],
                         extra=["-D", f"127.0.0.1:{port}", "--wait-for-tunnel", "25"])
    H.wait_for_port(port, timeout=10, proc=client, connect=False)
    s, method = socks5_open(port, timeout=30)
    assert method == 0
    s.sendall(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack(">H", echo.port))   # CONNECT, no tunnel yet
    adit.server([f"127.0.0.1:{echo.port}"], port=server_port)
    ver, rep = H.recv_exactly(s, 10)[:2]
    assert rep == SUCCEEDED, f"the waiting connection got reply {rep:#x} once the tunnel came up"
    echo_round_trip(s, b"waited for the tunnel")
    assert echo.accepted == 1
