"""5. Refused and denied targets: the local connection is closed promptly with no data,
and the client logs why."""

import socket
import time

import pytest

import e2e_helpers as H


def _assert_closed_promptly(port, limit=2.0):
    """Promptly: within `limit` seconds (2 s), times ADIT_E2E_TIMEOUT_SCALE."""
    t0 = time.monotonic()
    # early data must not reach anyone
    how, data = H.refused_locally(port, timeout=limit + 3, send=b"GET / HTTP/1.0\r\n\r\n")
    dt = time.monotonic() - t0
    assert data == b"", f"received {len(data)} bytes from a failed stream"
    assert how == "reset", f"a failed stream must abort the local connection, not end it cleanly ({how})"
    assert dt <= H.scaled(limit), f"local connection closed only after {dt:.2f}s ({how}; limit {H.scaled(limit):g}s)"
    return how, dt


@pytest.mark.deadline(45)
def test_refused_target(adit, targets):
    dead_port = H.free_port()           # allowed, but nothing listens there
    t = adit.tunnel([dead_port])
    mark = t.client.log_mark()
    how, dt = _assert_closed_promptly(t.ports[0])
    line = t.client.wait_for_log("refused", timeout=5, since=mark)
    print(f"closed by {how} after {dt:.3f}s; client logged: {line}")
    # the tunnel is still fine for other streams
    assert H.make_probe(t.probe_port)
    assert t.client.alive() and t.server.alive()


@pytest.mark.deadline(45)
def test_denied_target(adit, targets):
    forbidden = targets.echo()          # a real listener: denial must come from policy, not from refusal
    allowed = targets.echo()
    t = adit.tunnel([allowed.port, forbidden.port], allow=[f"127.0.0.1:{allowed.port}"])
    mark = t.client.log_mark()
    how, dt = _assert_closed_promptly(t.ports[1])
    line = t.client.wait_for_log("not allowed by policy", timeout=5, since=mark)
    print(f"closed by {how} after {dt:.3f}s; client logged: {line}")
    # the allowed forward still works on the same tunnel
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(10))
        s.sendall(b"still fine")
        assert H.recv_exactly(s, 10) == b"still fine"
    # A connect the policy forbids must never come. The server handled the denied OPEN before the allowed one
    # that just echoed; the short (scaled) window covers the target's accept thread. A negative check: a longer
    # window only makes it stronger.
    time.sleep(H.scaled(0.3))
    assert forbidden.accepted == 0, "the server connected to a target its policy denies"
    assert t.client.alive() and t.server.alive()


@pytest.mark.deadline(60)
@pytest.mark.parametrize("allow,ok", [
    ("127.0.0.1:*", True),
    ("*:*", False),                 # a broad rule never opens the server's loopback (issue 8's secure default)
    ("0.0.0.0/0:{port}", False),
    ("[::/0]:{port}", False),       # nor does an IPv6 rule reach an IPv4 host
    ("127.0.0.0/8:{port}", True),
    ("127.0.0.1:{port}", True),
    ("*.example.com:443", False),
    ("10.0.0.0/8:22", False),
    ("[::1]:*", False),
    ("127.0.0.1:{other}", False),
    ("127.0.0.2:{port}", False),
])
def test_allow_patterns(adit, targets, allow, ok):
    """Each pattern form of the contract, matched against target 127.0.0.1:<echo port>."""
    echo = targets.echo()
    pattern = allow.format(port=echo.port, other=echo.port + 1 if echo.port < 65535 else 1)
    t = adit.tunnel([echo.port], allow=[pattern])
    if ok:
        with H.connect_local(t.ports[0]) as s:
            s.settimeout(H.scaled(10))
            s.sendall(b"ok?")
            assert H.recv_exactly(s, 3) == b"ok?"
    else:
        _assert_closed_promptly(t.ports[0])
        t.client.wait_for_log("not allowed by policy", timeout=5)
        assert echo.accepted == 0


@pytest.mark.deadline(45)
def test_many_denied_streams_do_not_break_the_tunnel(adit, targets):
    forbidden = targets.echo()
    t = adit.tunnel([forbidden.port], allow=[])
    for _ in range(50):
        assert H.refused_locally(t.ports[0], timeout=5) == ("reset", b"")
    assert forbidden.accepted == 0
    assert H.make_probe(t.probe_port)
