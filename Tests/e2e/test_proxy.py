"""Reaching the server through real proxies: squid (no auth, Basic, Digest, NTLM verified by a helper that checks
the NTLMv2 answer), tinyproxy (Basic, closes after its 407), dante and a SOCKS5 server of ours (username/password,
every kind of bound address); the proxy environment variables; and every failure as one clear sentence in the
client's log. That the proxy really carried (or refused) the tunnel is judged from the proxy's side: its access
log, the bytes on the wire, and where the client's connection goes (/proc), never from adit's log alone."""

import base64
import os
import socket
import threading

import pytest

import e2e_helpers as H
from proxies import PASSWORD, USER, Dante, Socks5Server, Squid, TapRelay, Tinyproxy, have, relay

MiB = H.MiB
needs_squid = pytest.mark.skipif(not have("squid", "htpasswd"), reason="squid and htpasswd are needed (make test installs them)")
needs_tinyproxy = pytest.mark.skipif(not have("tinyproxy"), reason="tinyproxy is needed (make test installs it)")


@pytest.fixture
def started(tmp_path):
    running = []

    def start(factory, *args, **kw):
        p = factory(*args, **kw)
        running.append(p)
        return p

    yield start
    for p in running:
        p.stop()


def through(adit, targets, proxy_args, env=None, total=None, blob=None):
    """Server, client through the proxy, and one transfer: echo, or `total` bytes to a hashing sink."""
    target = targets.hash_sink() if total else targets.echo()
    server = adit.server([f"127.0.0.1:{target.port}"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", target.port)], extra=proxy_args, env=env)
    if total:
        H.wait_for_port(local, timeout=10, connect=False)   # a probe connection would feed the sink
    else:
        H.wait_tunnel_ready(local, timeout=20, proc=client)
    with H.connect_local(local, timeout=20) as s:
        s.settimeout(60)
        if total:
            count, sha = H.send_blob(s, blob, total, seed=3)
            assert H.recv_until_eof(s) == f"{count} {sha}\n".encode(), "bytes were lost or changed through the proxy"
        else:
            s.sendall(b"ping through the proxy")
            assert H.recv_exactly(s, 22) == b"ping through the proxy"
    return server, client


def credentials(extra_env=None):
    env = {"ADIT_PROXY_PASSWORD": PASSWORD}
    env.update(extra_env or {})
    return ["--proxy-user", USER], env


def squid_tunnels(squid, port):
    """Squid's access-log entries of tunnels to 127.0.0.1:port that it carried (TCP_TUNNEL/200); the 407s of an
    authentication handshake are logged too, as TCP_DENIED."""
    return [e for e in squid.tunnels_to(port) if e["status"] == "TCP_TUNNEL/200"]


def assert_talks_to(client, proxy_port, server_port):
    """The client's tunnel connection really goes to the proxy, and none goes to the server directly (from /proc,
    not from adit's log)."""
    peers = H.wait_until(lambda: H.remote_ports(client.pid) & {proxy_port, server_port}, 10,
                         what="the client's tunnel connection")
    assert peers == {proxy_port}, (f"the client's connections go to ports {sorted(H.remote_ports(client.pid))}: "
                                   f"expected the proxy's {proxy_port} and not the server's {server_port}")


@needs_squid
@pytest.mark.deadline(90)
@pytest.mark.parametrize("variant", ["noauth", "basic", "digest", "ntlm"])
def test_256_mib_through_squid(adit, targets, started, tmp_path, blob, variant):
    squid = started(Squid, variant, tmp_path)
    args, env = credentials() if variant != "noauth" else ([], None)
    server, client = through(adit, targets, ["--proxy", squid.url, *args], env=env, total=256 * MiB, blob=blob)
    assert_talks_to(client, squid.port, server.port)
    client.stop()   # squid logs a tunnel when it ends
    tunnels = H.wait_until(lambda: squid_tunnels(squid, server.port), 10, what="squid logged no tunnel to the server")
    assert max(e["up"] for e in tunnels) >= 256 * MiB, f"squid carried less than 256 MiB up: {tunnels}"
    if variant != "noauth":
        assert all(e["user"] == USER for e in tunnels), tunnels
    if variant == "ntlm":   # the helper really checked the NTLMv2 answer
        assert f"VERIFIED domain= user={USER}" in squid.ntlm_log(), squid.ntlm_log()


@needs_tinyproxy
@pytest.mark.deadline(60)
def test_tinyproxy_basic_closes_after_407_and_adit_reconnects(adit, targets, started, tmp_path, blob):
    """tinyproxy answers the first CONNECT (no credentials yet) with 407 and closes the connection: adit must answer
    on a new connection. Judged from the bytes on the wire (a relay in front of tinyproxy) and tinyproxy's log."""
    tiny = started(Tinyproxy, tmp_path)
    tap = started(TapRelay, tiny.port)
    args, env = credentials()
    server, client = through(adit, targets, ["--proxy", tap.url, *args], env=env, total=256 * MiB, blob=blob)
    assert_talks_to(client, tap.port, server.port)
    client.stop()
    H.wait_until(lambda: len(tap.conns) >= 2 and all(c.done.is_set() for c in tap.conns), 10,
                 what="two finished connections through the tap")
    first, second = tap.conns[0], tap.conns[1]
    connect_line = f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode()
    assert first.request.startswith(connect_line), first.request
    assert b"proxy-authorization" not in first.request.lower(), first.request
    assert first.answer.split(b"\r\n")[0] in (b"HTTP/1.0 407 Proxy Authentication Required",
                                               b"HTTP/1.1 407 Proxy Authentication Required"), first.answer
    assert first.first_eof == "proxy", "tinyproxy did not close the connection after its 407 (or adit closed first)"
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode())
    assert second.request.startswith(connect_line), second.request
    assert b"Proxy-Authorization: Basic " + token in second.request, second.request
    assert second.answer.startswith(b"HTTP/1.0 200"), second.answer
    assert second.up >= 256 * MiB, f"only {second.up} bytes went up the authorised connection"
    assert len(tap.conns) == 2, f"{len(tap.conns)} connections to the proxy, expected 2"
    # tinyproxy's own account: two CONNECT requests read, one tunnel established.
    assert len(tiny.requests_to(server.port)) == 2, tiny.log_text()
    assert len(tiny.established()) == 1, tiny.log_text()


@pytest.mark.deadline(60)
def test_256_mib_through_socks5_with_username_and_password(adit, targets, started, blob):
    socks = started(Socks5Server)
    args, env = credentials()
    server, client = through(adit, targets, ["--proxy", socks.url, *args], env=env, total=256 * MiB, blob=blob)
    assert_talks_to(client, socks.port, server.port)
    assert socks.requests and socks.requests[0] == ("127.0.0.1", server.port)
    assert socks.relayed["up"] >= 256 * MiB, socks.relayed


@pytest.mark.deadline(30)
@pytest.mark.parametrize("scheme,sent", [("socks5h", "localhost"), ("socks5", "127.0.0.1")])
def test_socks5_resolves_here_and_socks5h_at_the_proxy(adit, targets, started, scheme, sent):
    socks = started(Socks5Server, None)
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(f"ws://localhost:{server.port}", [(local, "127.0.0.1", echo.port)],
                         extra=["--proxy", f"{scheme}://127.0.0.1:{socks.port}"])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    assert socks.requests[0] == (sent, server.port)
    assert_talks_to(client, socks.port, server.port)


@pytest.mark.deadline(40)
@pytest.mark.parametrize("bound", ["ipv4", "ipv6", "domain"])
def test_socks5_bound_address_of_every_type(adit, targets, started, blob, bound):
    """RFC 1928 lets the proxy answer with an IPv4, IPv6 or domain-name BND.ADDR (4, 16 or 1+N bytes): adit must
    read exactly the reply, whatever its length, or the WebSocket upgrade that follows is corrupted."""
    socks = started(Socks5Server, None, bound=bound)
    server, client = through(adit, targets, ["--proxy", socks.url], total=16 * MiB, blob=blob)
    assert socks.replies and set(socks.replies) == {0}, socks.replies
    assert socks.relayed["up"] >= 16 * MiB, socks.relayed
    assert_talks_to(client, socks.port, server.port)


needs_dante = pytest.mark.skipif(not have("danted"),
                                 reason="danted is needed (package dante-server; make test installs it)")


@needs_dante
@pytest.mark.deadline(60)
@pytest.mark.parametrize("scheme,host", [("socks5", "127.0.0.1"), ("socks5h", "localhost")])
def test_through_dante(adit, targets, started, tmp_path, blob, scheme, host):
    """Debian's SOCKS server (dante) without authentication; socks5h:// lets dante resolve the server's name."""
    dante = started(Dante, tmp_path)
    sink = targets.hash_sink()
    server = adit.server([f"127.0.0.1:{sink.port}"])
    local = H.free_port()
    client = adit.client(f"ws://{host}:{server.port}", [(local, "127.0.0.1", sink.port)],
                         extra=["--proxy", f"{scheme}://127.0.0.1:{dante.port}"])
    H.wait_for_port(local, timeout=10, connect=False)
    with H.connect_local(local, timeout=20) as s:
        s.settimeout(60)
        count, sha = H.send_blob(s, blob, 64 * MiB, seed=11)
        assert H.recv_until_eof(s) == f"{count} {sha}\n".encode(), "bytes were lost or changed through dante"
    assert_talks_to(client, dante.port, server.port)
    client.stop()
    sent = H.wait_until(lambda: dante.bytes_sent_to(server.port), 10, what="dante logged no session to the server")
    assert len(sent) == 1 and sent[0] >= 64 * MiB, (sent, dante.sessions_to(server.port))


# ---------------------------------------------------------------------------------------------------------
# Failures: one sentence each.

def failing_client(adit, url, args, env=None):
    local = H.free_port()
    client = adit.client(url, [(local, "127.0.0.1", 9)], wait=False, extra=args, env=env)
    return client


def denied_only(squid, port, status):
    """Squid's log shows CONNECTs to 127.0.0.1:port, every one answered with `status` (e.g. TCP_DENIED/407), and
    no tunnel: the refusal really came from squid."""
    entries = H.wait_until(lambda: squid.tunnels_to(port), 10, what=f"squid logged no CONNECT to port {port}")
    assert all(e["status"] == status for e in entries), [e["line"] for e in entries]
    return entries


@needs_squid
@pytest.mark.deadline(40)
@pytest.mark.parametrize("variant,tried", [("basic", "Basic"), ("digest", "Digest (MD5)")])
def test_a_wrong_password_is_reported_with_the_schemes(adit, started, tmp_path, variant, tried):
    squid = started(Squid, variant, tmp_path)
    server = adit.server(["127.0.0.1:9"])
    client = failing_client(adit, server.url, ["--proxy", squid.url, "--proxy-user", USER],
                            env={"ADIT_PROXY_PASSWORD": "wrong"})
    line = client.wait_for_log("the proxy rejected our credentials", timeout=15)
    assert f"we tried {tried}" in line, line
    assert f"through the proxy http://{USER}@127.0.0.1:{squid.port}" in line
    H.assert_stops(client)   # retrying a wrong password could lock the account
    H.wait_until(lambda: len(squid.tunnels_to(server.port)) >= 2, 10, what="two CONNECTs logged by squid")
    entries = denied_only(squid, server.port, "TCP_DENIED/407")
    assert any(e["user"] == USER for e in entries), "squid never saw our (wrong) credentials: " + squid.access_log()


@needs_tinyproxy
@pytest.mark.deadline(40)
def test_tinyproxy_wrong_password_401_is_a_rejection(adit, started, tmp_path):
    tiny = started(Tinyproxy, tmp_path)
    tap = started(TapRelay, tiny.port)
    server = adit.server(["127.0.0.1:9"])
    client = failing_client(adit, server.url, ["--proxy", tap.url, "--proxy-user", USER],
                            env={"ADIT_PROXY_PASSWORD": "wrong"})
    assert client.wait_for_log("the proxy rejected our credentials", timeout=15)
    H.assert_stops(client)
    H.wait_until(lambda: len(tap.conns) >= 2 and tap.conns[1].done.is_set(), 10, what="two answered CONNECTs")
    answers = [c.answer.split(b"\r\n")[0] for c in tap.conns[:2]]
    assert answers[0].startswith(b"HTTP/1.0 407") and answers[1].startswith(b"HTTP/1.0 401"), answers
    assert b"Proxy-Authorization: Basic " in tap.conns[1].request
    assert len(tiny.requests_to(server.port)) >= 2 and not tiny.established(), tiny.log_text()


@needs_squid
@pytest.mark.deadline(40)
def test_no_credentials_names_the_offered_schemes(adit, started, tmp_path):
    squid = started(Squid, "basic", tmp_path)
    server = adit.server(["127.0.0.1:9"])
    client = failing_client(adit, server.url, ["--proxy", squid.url])
    line = client.wait_for_log("requires authentication", timeout=15)
    assert "it offers Basic" in line and "--proxy-user" in line, line
    H.assert_stops(client)
    entries = denied_only(squid, server.port, "TCP_DENIED/407")
    assert all(e["user"] == "-" for e in entries), [e["line"] for e in entries]


@needs_squid
@pytest.mark.deadline(40)
def test_acl_denial_and_unreachable_server(adit, started, tmp_path):
    server = adit.server(["127.0.0.1:9"])
    squid = started(Squid, "noauth", tmp_path, deny_port=server.port)
    denied = failing_client(adit, server.url, ["--proxy", squid.url])
    line = denied.wait_for_log("the proxy refused to connect to", timeout=15)
    assert f"127.0.0.1:{server.port}: 403" in line and "ERR_ACCESS_DENIED" in line, line
    denied_only(squid, server.port, "TCP_DENIED/403")
    nothing = H.free_port()
    unreachable = failing_client(adit, f"ws://127.0.0.1:{nothing}", ["--proxy", squid.url])
    line = unreachable.wait_for_log("the proxy could not reach", timeout=15)
    assert "503" in line and "Connection refused" in line, line
    entries = H.wait_until(lambda: squid.tunnels_to(nothing), 10, what="squid logged no CONNECT to the dead port")
    assert all(e["status"].endswith("/503") for e in entries), [e["line"] for e in entries]


@pytest.mark.deadline(40)
def test_a_proxy_that_does_not_speak_http_or_does_not_answer(adit, targets):
    server = adit.server(["127.0.0.1:9"])
    heard = []

    def echo_recording(conn, srv):   # answers CONNECT with CONNECT
        data = conn.recv(4096)
        heard.append(data)
        conn.sendall(data)
        while data:
            data = conn.recv(65536)
            if data:
                conn.sendall(data)

    echo = targets.custom("echo-proxy", echo_recording)
    not_http = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{echo.port}"])
    assert not_http.wait_for_log("is not HTTP", timeout=15)
    assert heard and heard[0].startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n".encode()), heard
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        mute = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{silent.getsockname()[1]}",
                                                 "--connect-timeout", "2"])
        assert mute.wait_for_log("did not answer CONNECT within 2 s", timeout=15)
        silent.settimeout(5)
        conn, _ = silent.accept()   # the proxy really was asked, and said nothing
        with conn:
            conn.settimeout(5)
            assert conn.recv(4096).startswith(b"CONNECT ")
    finally:
        silent.close()
    gone_port = H.free_port()
    gone = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{gone_port}"])
    assert gone.wait_for_log(f"cannot reach the proxy http://127.0.0.1:{gone_port}", timeout=15)


@pytest.mark.deadline(30)
def test_connect_headers_and_user_agent_reach_the_proxy(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    seen = []

    def fake_proxy(conn, srv):
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)
        seen.append(head.decode())
        upstream = socket.create_connection(("127.0.0.1", server.port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        relay(conn, upstream)

    proxy = targets.custom("fake-proxy", fake_proxy)
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)],
                         extra=["--proxy", f"http://127.0.0.1:{proxy.port}", "--proxy-header", "X-Team: ops",
                                "--user-agent", "Mozilla/5.0 (adit test)"])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    request = seen[0]
    assert request.startswith(f"CONNECT 127.0.0.1:{server.port} HTTP/1.1\r\n"), request
    assert "X-Team: ops" in request and "User-Agent: Mozilla/5.0 (adit test)" in request, request
    assert f"Host: 127.0.0.1:{server.port}" in request


# ---------------------------------------------------------------------------------------------------------
# The environment, as curl reads it.

@needs_squid
@pytest.mark.deadline(60)
def test_http_proxy_environment_and_no_proxy(adit, targets, started, tmp_path):
    squid = started(Squid, "noauth", tmp_path)
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])

    def client(env, via_proxy, extra=()):
        local = H.free_port()
        c = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=list(extra), env=env)
        H.wait_tunnel_ready(local, timeout=15, proc=c)
        # Where its tunnel connection really goes (from /proc), whatever the log says.
        if via_proxy:
            assert_talks_to(c, squid.port, server.port)
        else:
            assert_talks_to(c, server.port, squid.port)
        return c

    via = client({"http_proxy": squid.url}, True)
    assert via.wait_for_log(f"through the proxy http://127.0.0.1:{squid.port} (from http_proxy)")
    upper = client({"HTTP_PROXY": squid.url}, True)
    assert upper.wait_for_log("(from HTTP_PROXY)")
    all_proxy = client({"ALL_PROXY": squid.url}, True)
    assert all_proxy.wait_for_log("(from ALL_PROXY)")
    for no_proxy, entry in [("127.0.0.1", "127.0.0.1"), ("example.com, 127.0.0.0/8", "127.0.0.0/8"),
                            ("*", "*"), (f"127.0.0.1:{server.port}", f"127.0.0.1:{server.port}")]:
        direct = client({"http_proxy": squid.url, "NO_PROXY": no_proxy}, False)
        line = direct.wait_for_log("directly")
        assert f"matches NO_PROXY entry '{entry}'" in line, line
    other_port = client({"http_proxy": squid.url, "no_proxy": "127.0.0.1:1"}, True)
    assert other_port.wait_for_log("(from http_proxy)")
    flag = client({"http_proxy": squid.url}, False, ["--no-proxy"])
    assert flag.wait_for_log("directly (--no-proxy)")
    # https_proxy is for wss:// only; a ws:// server ignores it.
    ignored = client({"https_proxy": "http://127.0.0.1:1"}, False)
    assert not ignored.log_lines_matching("through the proxy")
    # squid's own account: exactly the four proxied clients made a tunnel (logged when they end).
    for c in (via, upper, all_proxy, other_port):
        c.stop()
    tunnels = H.wait_until(lambda: len(squid_tunnels(squid, server.port)) >= 4 and squid_tunnels(squid, server.port),
                           10, what="squid logged four tunnels")
    assert len(squid.tunnels_to(server.port)) == 4, [e["line"] for e in squid.tunnels_to(server.port)]


# ---------------------------------------------------------------------------------------------------------
# Negotiate (Kerberos) with a real MIT KDC: the user's ticket cache, no password given to adit.

from proxies import KerberosRealm   # noqa: E402

needs_kerberos = pytest.mark.skipif(not have("squid", "krb5kdc", "kdb5_util", "kinit")
                                    or not os.path.exists("/usr/lib/squid/negotiate_kerberos_auth"),
                                    reason="squid and an MIT KDC are needed (make test installs them)")


@needs_squid
@needs_kerberos
@pytest.mark.deadline(90)
def test_negotiate_with_a_kerberos_ticket(adit, targets, started, tmp_path, blob):
    realm = started(KerberosRealm)
    squid = started(Squid, "negotiate", tmp_path, kerberos=realm)
    # The proxy by name: the ticket is for HTTP/localhost.
    env = {k: v for k, v in realm.env.items() if k != "KRB5_KDC_PROFILE"}
    server, client = through(adit, targets, ["--proxy", f"http://localhost:{squid.port}"], env=env,
                             total=256 * MiB, blob=blob)
    assert_talks_to(client, squid.port, server.port)
    client.stop()
    tunnels = H.wait_until(lambda: squid_tunnels(squid, server.port), 10, what="squid logged no tunnel")
    assert [e["user"] for e in tunnels] == ["alice@ADIT.TEST"] and tunnels[0]["up"] >= 256 * MiB, tunnels
    # Without a ticket: one sentence that says what to do.
    no_ticket = {**env, "KRB5CCNAME": f"FILE:{tmp_path}/empty.ccache"}
    lonely = failing_client(adit, server.url, ["--proxy", f"http://localhost:{squid.port}"], env=no_ticket)
    line = lonely.wait_for_log("no ticket could be used", timeout=15)
    assert "kinit" in line, line


@needs_squid
@pytest.mark.deadline(60)
def test_a_chain_of_two_proxies_each_with_its_own_authentication(adit, targets, started, tmp_path, blob):
    near = started(Squid, "noauth", tmp_path)
    far = started(Squid, "basic", tmp_path)
    chain = ["--proxy", near.url, "--proxy", f"http://{USER}@127.0.0.1:{far.port}"]
    server, client = through(adit, targets, chain, env={"ADIT_PROXY_PASSWORD": PASSWORD}, total=64 * MiB, blob=blob)
    assert client.wait_for_log(f"through the proxy http://127.0.0.1:{near.port}, then http://{USER}@127.0.0.1:{far.port}")
    assert_talks_to(client, near.port, server.port)
    client.stop()
    outer = H.wait_until(lambda: squid_tunnels(near, far.port), 10, what="the near proxy carried no tunnel")
    inner = H.wait_until(lambda: squid_tunnels(far, server.port), 10, what="the far proxy carried no tunnel")
    assert max(e["up"] for e in outer) >= 64 * MiB, outer
    assert inner[0]["up"] >= 64 * MiB and inner[0]["user"] == USER, inner
    # A failure at the second hop names that hop.
    wrong = failing_client(adit, server.url, chain, env={"ADIT_PROXY_PASSWORD": "wrong"})
    line = wrong.wait_for_log("the proxy rejected our credentials", timeout=15)
    assert f"through the proxy http://{USER}@127.0.0.1:{far.port}:" in line, line
    H.assert_stops(wrong)


# ---------------------------------------------------------------------------------------------------------
# NTLM checked for real: squid with a helper that verifies the NTLMv2 response (fixtures/ntlm_verify_auth.py).

@needs_squid
@pytest.mark.deadline(60)
@pytest.mark.parametrize("user", ["ADIT\\alice", "alice@ADIT"])
def test_ntlm_right_password_passes_and_a_wrong_one_is_refused(adit, targets, started, tmp_path, blob, user):
    squid = started(Squid, "ntlm", tmp_path)
    server, client = through(adit, targets, ["--proxy", squid.url, "--proxy-user", user],
                             env={"ADIT_PROXY_PASSWORD": PASSWORD}, total=16 * MiB, blob=blob)
    assert_talks_to(client, squid.port, server.port)
    client.stop()
    tunnels = H.wait_until(lambda: squid_tunnels(squid, server.port), 10, what="squid logged no tunnel")
    assert len(tunnels) == 1 and tunnels[0]["up"] >= 16 * MiB and tunnels[0]["user"] == USER, tunnels
    verdicts = squid.ntlm_log()
    assert f"VERIFIED domain=ADIT user={USER}" in verdicts, verdicts
    assert not [v for v in verdicts if v.startswith("REJECTED")], verdicts

    # The same user with a wrong password: the helper computes the NTLMv2 proof and refuses it.
    refused_server = adit.server(["127.0.0.1:9"])
    wrong = failing_client(adit, refused_server.url, ["--proxy", squid.url, "--proxy-user", user],
                           env={"ADIT_PROXY_PASSWORD": "not-" + PASSWORD})
    line = wrong.wait_for_log("the proxy rejected our credentials", timeout=15)
    assert "we tried NTLM" in line, line
    H.assert_stops(wrong)
    H.wait_until(lambda: any(v.startswith(f"REJECTED domain=ADIT user={USER} reason=NTProofStr mismatch")
                             for v in squid.ntlm_log()), 10, what="the helper logged no rejection")
    denied_only(squid, refused_server.port, "TCP_DENIED/407")
