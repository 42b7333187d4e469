"""Reaching the server through real proxies: squid (no auth, Basic, Digest, NTLM), tinyproxy (Basic, closes
after its 407), SOCKS5 with username/password; the proxy environment variables; and every failure as one
clear sentence in the client's log."""

import os
import socket
import threading

import pytest

import e2e_helpers as H
from proxies import PASSWORD, USER, Socks5Server, Squid, Tinyproxy, have, relay

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


@needs_squid
@pytest.mark.deadline(90)
@pytest.mark.parametrize("variant", ["noauth", "basic", "digest", "ntlm"])
def test_256_mib_through_squid(adit, targets, started, tmp_path, blob, variant):
    squid = started(Squid, variant, tmp_path)
    args, env = credentials() if variant != "noauth" else ([], None)
    server, client = through(adit, targets, ["--proxy", squid.url, *args], env=env, total=256 * MiB, blob=blob)
    assert client.wait_for_log(f"through the proxy http://{USER + '@' if args else ''}127.0.0.1:{squid.port}")
    client.stop()   # squid logs a tunnel when it ends
    H.wait_until(lambda: "TCP_TUNNEL/200" in squid.access_log(), 10, what="squid logged no tunnel")
    if variant in ("basic", "digest"):
        assert f" {USER} " in squid.access_log()


@needs_tinyproxy
@pytest.mark.deadline(60)
def test_tinyproxy_basic_closes_after_407_and_adit_reconnects(adit, targets, started, tmp_path, blob):
    tiny = started(Tinyproxy, tmp_path)
    args, env = credentials()
    through(adit, targets, ["--proxy", tiny.url, *args], env=env, total=256 * MiB, blob=blob)


@pytest.mark.deadline(60)
def test_256_mib_through_socks5_with_username_and_password(adit, targets, started, blob):
    socks = started(Socks5Server)
    args, env = credentials()
    through(adit, targets, ["--proxy", socks.url, *args], env=env, total=256 * MiB, blob=blob)
    assert socks.requests and socks.requests[0][0] == "127.0.0.1"


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


# ---------------------------------------------------------------------------------------------------------
# Failures: one sentence each.

def failing_client(adit, url, args, env=None):
    local = H.free_port()
    client = adit.client(url, [(local, "127.0.0.1", 9)], extra=args, env=env)
    return client


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


@needs_tinyproxy
@pytest.mark.deadline(40)
def test_tinyproxy_wrong_password_401_is_a_rejection(adit, started, tmp_path):
    tiny = started(Tinyproxy, tmp_path)
    server = adit.server(["127.0.0.1:9"])
    client = failing_client(adit, server.url, ["--proxy", tiny.url, "--proxy-user", USER],
                            env={"ADIT_PROXY_PASSWORD": "wrong"})
    assert client.wait_for_log("the proxy rejected our credentials", timeout=15)


@needs_squid
@pytest.mark.deadline(40)
def test_no_credentials_names_the_offered_schemes(adit, started, tmp_path):
    squid = started(Squid, "basic", tmp_path)
    server = adit.server(["127.0.0.1:9"])
    client = failing_client(adit, server.url, ["--proxy", squid.url])
    line = client.wait_for_log("requires authentication", timeout=15)
    assert "it offers Basic" in line and "--proxy-user" in line, line


@needs_squid
@pytest.mark.deadline(40)
def test_acl_denial_and_unreachable_server(adit, started, tmp_path):
    server = adit.server(["127.0.0.1:9"])
    squid = started(Squid, "noauth", tmp_path, deny_port=server.port)
    denied = failing_client(adit, server.url, ["--proxy", squid.url])
    line = denied.wait_for_log("the proxy refused to connect to", timeout=15)
    assert f"127.0.0.1:{server.port}: 403" in line and "ERR_ACCESS_DENIED" in line, line
    nothing = H.free_port()
    unreachable = failing_client(adit, f"ws://127.0.0.1:{nothing}", ["--proxy", squid.url])
    line = unreachable.wait_for_log("the proxy could not reach", timeout=15)
    assert "503" in line and "Connection refused" in line, line


@pytest.mark.deadline(40)
def test_a_proxy_that_does_not_speak_http_or_does_not_answer(adit, targets):
    echo = targets.echo()   # answers CONNECT with CONNECT
    server = adit.server(["127.0.0.1:9"])
    not_http = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{echo.port}"])
    assert not_http.wait_for_log("is not HTTP", timeout=15)
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    try:
        mute = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{silent.getsockname()[1]}",
                                                 "--connect-timeout", "2"])
        assert mute.wait_for_log("did not answer CONNECT within 2 s", timeout=15)
    finally:
        silent.close()
    gone = failing_client(adit, server.url, ["--proxy", f"http://127.0.0.1:{H.free_port()}"])
    assert gone.wait_for_log("cannot reach the proxy http://127.0.0.1:", timeout=15)


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

    def client(env, extra=()):
        local = H.free_port()
        c = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=list(extra), env=env)
        H.wait_tunnel_ready(local, timeout=15, proc=c)
        return c

    via = client({"http_proxy": squid.url})
    assert via.wait_for_log(f"through the proxy http://127.0.0.1:{squid.port} (from http_proxy)")
    upper = client({"HTTP_PROXY": squid.url})
    assert upper.wait_for_log("(from HTTP_PROXY)")
    all_proxy = client({"ALL_PROXY": squid.url})
    assert all_proxy.wait_for_log("(from ALL_PROXY)")
    for no_proxy, entry in [("127.0.0.1", "127.0.0.1"), ("example.com, 127.0.0.0/8", "127.0.0.0/8"),
                            ("*", "*"), (f"127.0.0.1:{server.port}", f"127.0.0.1:{server.port}")]:
        direct = client({"http_proxy": squid.url, "NO_PROXY": no_proxy})
        line = direct.wait_for_log("directly")
        assert f"matches NO_PROXY entry '{entry}'" in line, line
    other_port = client({"http_proxy": squid.url, "no_proxy": "127.0.0.1:1"})
    assert other_port.wait_for_log("(from http_proxy)")
    flag = client({"http_proxy": squid.url}, ["--no-proxy"])
    assert flag.wait_for_log("directly (--no-proxy)")
    # https_proxy is for wss:// only; a ws:// server ignores it.
    ignored = client({"https_proxy": "http://127.0.0.1:1"})
    assert not ignored.log_lines_matching("through the proxy")


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
    client.stop()
    H.wait_until(lambda: "alice@ADIT.TEST" in squid.access_log(), 10, what="squid logged no Kerberos user")
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
    client.stop()
    H.wait_until(lambda: f"CONNECT 127.0.0.1:{far.port}" in near.access_log(), 10, what="the near proxy saw no CONNECT")
    H.wait_until(lambda: f"CONNECT 127.0.0.1:{server.port}" in far.access_log(), 10, what="the far proxy saw no CONNECT")
    # A failure at the second hop names that hop.
    wrong = failing_client(adit, server.url, chain, env={"ADIT_PROXY_PASSWORD": "wrong"})
    line = wrong.wait_for_log("the proxy rejected our credentials", timeout=15)
    assert f"through the proxy http://{USER}@127.0.0.1:{far.port}:" in line, line
