"""Proxy credentials in every documented form (--proxy-password-file, --proxy-user USER:PASS, USER:PASS@ in the
URL), Digest with the -sess algorithms (a Digest proxy of our own: squid only offers MD5), and every SOCKS5
failure named in the client's log (each reply code, the method and credential refusals). Each is judged by what
the proxy saw, not only by adit's log."""

import pytest

import e2e_helpers as H
from proxies import PASSWORD, USER, DigestSessProxy, Socks5Server, Squid, have

SCALE = H.timeout_scale()
MiB = H.MiB
needs_squid = pytest.mark.skipif(not have("squid", "htpasswd"), reason="squid and htpasswd are needed (make test installs them)")


@pytest.fixture
def started():
    running = []

    def start(factory, *args, **kw):
        p = factory(*args, **kw)
        running.append(p)
        return p

    yield start
    for p in running:
        p.stop()


def echo_through(adit, targets, proxy_args, env=None):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=proxy_args, env=env)
    H.wait_tunnel_ready(local, timeout=20, proc=client)
    with H.connect_local(local) as s:
        s.settimeout(20 * SCALE)
        payload = b"through the proxy " * 1000
        s.sendall(payload)
        assert H.recv_exactly(s, len(payload)) == payload
    return server, client


def refused_client(adit, proxy_args, env=None):
    server = adit.server(["127.0.0.1:9"])
    client = adit.client(server.url, [(H.free_port(), "127.0.0.1", 9)], wait=False, extra=proxy_args, env=env)
    return server, client


# ---------------------------------------------------------------------------------------------------------
# Where the password comes from

@needs_squid
@pytest.mark.deadline(60)
def test_every_way_of_giving_the_proxy_password(adit, targets, started, tmp_path):
    squid = started(Squid, "basic", tmp_path)
    pw_file = tmp_path / "proxy-pass"
    pw_file.write_text(f"{PASSWORD}\nnot-the-password-second-line\n")   # the first line is the password
    forms = {
        "--proxy-password-file": (["--proxy", squid.url, "--proxy-user", USER, "--proxy-password-file", str(pw_file)],
                                  None),
        "--proxy-user USER:PASS": (["--proxy", squid.url, "--proxy-user", f"{USER}:{PASSWORD}"], None),
        "USER:PASS@ in the URL": (["--proxy", f"http://{USER}:{PASSWORD}@127.0.0.1:{squid.port}"], None),
        "ADIT_PROXY_PASSWORD": (["--proxy", squid.url, "--proxy-user", USER], {"ADIT_PROXY_PASSWORD": PASSWORD}),
    }
    for form, (args, env) in forms.items():
        server, client = echo_through(adit, targets, args, env)
        assert PASSWORD not in " ".join(client.log_lines_matching("through the proxy")), \
            f"{form}: the password shows in the log"
        client.stop()
        tunnels = H.wait_until(lambda: [e for e in squid.tunnels_to(server.port) if e["status"] == "TCP_TUNNEL/200"],
                               10 * SCALE, what=f"squid to log the tunnel ({form})")
        assert tunnels[0]["user"] == USER, (form, tunnels)
    # A wrong first line in the file is refused (the file really is read).
    pw_file.write_text("wrong\n" + PASSWORD + "\n")
    server, client = refused_client(adit, ["--proxy", squid.url, "--proxy-user", USER, "--proxy-password-file",
                                           str(pw_file)])
    assert client.wait_for_log("the proxy rejected our credentials", timeout=15)
    H.assert_stops(client)
    H.wait_until(lambda: any(e["user"] == USER for e in squid.tunnels_to(server.port)), 10,
                 what="squid to log the refused credentials")
    assert all(e["status"] == "TCP_DENIED/407" for e in squid.tunnels_to(server.port))


# ---------------------------------------------------------------------------------------------------------
# Digest -sess

@pytest.mark.deadline(40)
@pytest.mark.parametrize("algorithm", ["MD5-sess", "SHA-256-sess"])
def test_digest_sess_algorithms(adit, targets, started, algorithm):
    proxy = started(DigestSessProxy, algorithm)
    args, env = ["--proxy", proxy.url, "--proxy-user", USER], {"ADIT_PROXY_PASSWORD": PASSWORD}
    echo_through(adit, targets, args, env)
    assert proxy.verdicts and proxy.verdicts[0][0] == "VERIFIED", proxy.verdicts
    assert f"algorithm {algorithm}" in proxy.verdicts[0][1], proxy.verdicts
    assert not [v for v in proxy.verdicts if v[0] == "REJECTED"], proxy.verdicts
    # The wrong password: the proxy computes the -sess answer and refuses it.
    server, client = refused_client(adit, args, {"ADIT_PROXY_PASSWORD": "wrong"})
    line = client.wait_for_log("the proxy rejected our credentials", timeout=15)
    assert f"it offers Digest ({algorithm}); we tried Digest ({algorithm})" in line, line
    H.assert_stops(client)
    H.wait_until(lambda: any(v[0] == "REJECTED" for v in proxy.verdicts), 5, what="the proxy's refusal")
    assert any("wrong response" in v[1] for v in proxy.verdicts if v[0] == "REJECTED"), proxy.verdicts


# ---------------------------------------------------------------------------------------------------------
# SOCKS5 failures, one sentence each

REPLY_REASONS = {1: "general failure", 2: "not allowed by its rules", 3: "network unreachable", 4: "host unreachable",
                 5: "connection refused", 6: "TTL expired", 7: "command not supported",
                 8: "address type not supported"}


@pytest.mark.deadline(30)
@pytest.mark.parametrize("code", sorted(REPLY_REASONS))
def test_socks5_reply_codes_are_named(adit, started, code):
    socks = started(Socks5Server, None, refuse=code)
    server, client = refused_client(adit, ["--proxy", f"socks5://127.0.0.1:{socks.port}"])
    line = client.wait_for_log("the SOCKS5 proxy could not connect", timeout=15)
    assert f"through the proxy socks5://127.0.0.1:{socks.port}: the SOCKS5 proxy could not connect: " \
           f"{REPLY_REASONS[code]};" in line, line
    assert socks.requests[0] == ("127.0.0.1", server.port) and socks.replies[0] == code
    assert not client.log_lines_matching("is up")


@pytest.mark.deadline(30)
def test_socks5_credential_failures_are_named(adit, targets, started):
    socks = started(Socks5Server)   # requires alice/s3cret
    _, no_user = refused_client(adit, ["--proxy", socks.url])
    line = no_user.wait_for_log("the SOCKS5 proxy requires a username and password", timeout=15)
    assert "--proxy-user" in line, line
    H.assert_stops(no_user)
    _, wrong = refused_client(adit, ["--proxy", socks.url, "--proxy-user", USER], {"ADIT_PROXY_PASSWORD": "wrong"})
    assert wrong.wait_for_log("the SOCKS5 proxy rejected our username or password", timeout=15)
    H.assert_stops(wrong)
    assert not socks.requests, "a CONNECT got past the authentication"

    greetings = []

    def no_method(conn, srv):   # accepts none of the offered methods
        greetings.append(conn.recv(64))
        conn.sendall(b"\x05\xff")

    picky = targets.custom("socks-no-method", no_method)
    _, refused = refused_client(adit, ["--proxy", f"socks5://127.0.0.1:{picky.port}", "--proxy-user", USER],
                                {"ADIT_PROXY_PASSWORD": PASSWORD})
    assert refused.wait_for_log("the SOCKS5 proxy accepts none of our authentication methods", timeout=15)
    H.assert_stops(refused)
    # adit offered "no authentication" and "username/password" (RFC 1928 methods 0 and 2)
    assert greetings and greetings[0][0] == 5 and set(greetings[0][2:2 + greetings[0][1]]) == {0, 2}, greetings

    def not_socks(conn, srv):
        conn.recv(64)
        conn.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    http = targets.custom("not-socks", not_socks)
    _, confused = refused_client(adit, ["--proxy", f"socks5://127.0.0.1:{http.port}"])
    assert confused.wait_for_log("the proxy's answer is not SOCKS5", timeout=15)
