"""1. Echo through the tunnel: small messages, exact bytes."""

import socket

import pytest

import e2e_helpers as H


@pytest.mark.deadline(45)
def test_echo_small_messages(adit, targets):
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(10))
        messages = [b"a", b"hello adit\n", bytes(range(256)), b"\x00" * 7, b"\r\n\r\n",
                    "ünïcödé ✓".encode(), bytes(range(255, -1, -1)) * 40]
        for msg in messages:
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
        # 100 quick ping-pongs with distinct contents
        for i in range(100):
            msg = f"ping {i:03d} ".encode() * (i + 1)
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
        # the echo server sends EOF after ours, nothing extra arrives
        s.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(s) == b""
    # exactly one connection reached the target (besides the probe's own server)
    echo.wait_results(1, timeout=5)
    assert echo.accepted == 1
    assert echo.results == [sum(len(m) for m in messages) + sum(len(f"ping {i:03d} ".encode()) * (i + 1) for i in range(100))]
    assert not echo.errors


@pytest.mark.deadline(45)
def test_echo_several_sequential_connections(adit, targets):
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    for i in range(20):
        with H.connect_local(t.ports[0]) as s:
            s.settimeout(H.scaled(10))
            msg = f"connection {i}".encode()
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
            s.shutdown(socket.SHUT_WR)
            assert H.recv_until_eof(s) == b""
    echo.wait_results(20, timeout=10)
    assert echo.accepted == 20
    assert not echo.errors


@pytest.mark.deadline(45)
def test_echo_two_forwards_one_client(adit, targets):
    """Two -L forwards of one client reach their own targets."""
    e1, e2 = targets.echo(), targets.echo()
    t = adit.tunnel([e1.port, e2.port])
    for port in t.ports:
        with H.connect_local(port) as s:
            s.settimeout(H.scaled(10))
            s.sendall(b"x" * 1000)
            assert H.recv_exactly(s, 1000) == b"x" * 1000
    e1.wait_results(1, 5)
    e2.wait_results(1, 5)
    assert e1.accepted == 1 and e2.accepted == 1


def _echo_once(port, n=5000):
    with H.connect_local(port) as s:
        s.settimeout(H.scaled(10))
        data = bytes(i % 251 for i in range(n))
        s.sendall(data)
        assert H.recv_exactly(s, n) == data


@pytest.mark.deadline(45)
def test_forward_without_bind_address(adit, targets):
    """-L PORT:HOST:HOSTPORT binds 127.0.0.1 by default."""
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    lport = H.free_port()
    client = adit.client(server.url, [], extra=["-L", f"{lport}:127.0.0.1:{echo.port}"])
    H.wait_for_port(lport, timeout=10, proc=client, connect=False)
    H.wait_tunnel_ready(lport, timeout=15, proc=client)
    _echo_once(lport)


@pytest.mark.deadline(45)
def test_ipv6_target(adit, targets):
    try:
        echo6 = targets.echo(host="::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    t = adit.tunnel([], allow=["[::1]:*"], extra_forwards=[("::1", echo6.port)])
    _echo_once(t.ports[0])
    assert echo6.accepted == 1


@pytest.mark.deadline(45)
def test_hostname_target(adit, targets):
    """A target given by name ("localhost") is resolved by the server."""
    echo = targets.echo()
    t = adit.tunnel([], allow=[f"localhost:{echo.port}"], extra_forwards=[("localhost", echo.port)])
    _echo_once(t.ports[0])
    assert echo.accepted == 1
