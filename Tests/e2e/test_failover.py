"""Several servers for one client (--server): failover in order, and back when a server goes away; the
tunnel lifecycle's GOAWAY path (a draining server hands new connections to a new tunnel)."""

import signal
import time

import pytest

import e2e_helpers as H


def _echo_once(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    with H.connect_local(port) as s:
        s.settimeout(H.scaled(timeout))
        s.sendall(payload)
        return H.recv_exactly(s, len(payload))


@pytest.mark.deadline(60)
def test_the_first_server_down_the_second_carries_the_tunnel(adit, targets):
    echo = targets.echo()
    dead = H.free_port()                     # nothing listens: the first server cannot be reached
    live = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{dead}/", [(local, "127.0.0.1", echo.port)],
                         extra=["--server", live.url + "/"])
    assert _echo_once(local, b"through the second server") == b"through the second server"
    client.wait_for_log(f"tunnel to {live.url}/ is up", timeout=10)
    # the client said it moved on from the first server at once, without waiting a backoff round
    line = client.wait_for_log(f"cannot reach the tunnel server ws://127.0.0.1:{dead}/", timeout=5)
    assert f"trying {live.url}/ next" in line, line


@pytest.mark.deadline(90)
def test_when_the_serving_server_dies_the_client_fails_over_and_comes_back(adit, targets):
    echo = targets.echo()
    first = adit.server([f"127.0.0.1:{echo.port}"])
    second = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(first.url + "/", [(local, "127.0.0.1", echo.port)],
                         extra=["--server", second.url + "/"])
    assert _echo_once(local, b"one") == b"one"
    client.wait_for_log(f"tunnel to {first.url}/ is up", timeout=10)

    mark = client.log_mark()
    first.signal(signal.SIGKILL)
    first.popen.wait(H.scaled(10))
    # the lost tunnel is redialled to the same server first (refused now), then to the second
    client.wait_for_log(f"tunnel to {second.url}/ is up", timeout=20, since=mark)
    assert _echo_once(local, b"two") == b"two"
    assert client.alive()


@pytest.mark.deadline(60)
def test_a_draining_server_sends_new_connections_to_a_new_tunnel(adit, targets):
    """GOAWAY: the client dials a new tunnel at once (to the first server it can reach); the stream open on
    the draining tunnel finishes there; new connections go through the new one. This is the path where the
    old TunnelManager could dial twice."""
    echo = targets.echo()
    draining = adit.server([f"127.0.0.1:{echo.port}"], extra=["--drain-timeout", "20"])
    standby = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(draining.url + "/", [(local, "127.0.0.1", echo.port)],
                         extra=["--server", standby.url + "/"])
    held = H.connect_local(local)
    held.settimeout(H.scaled(10))
    held.sendall(b"before")
    assert H.recv_exactly(held, 6) == b"before"

    mark = client.log_mark()
    draining.signal(signal.SIGTERM)          # GOAWAY; the held stream keeps the old tunnel open
    client.wait_for_log("the server is draining the tunnel", timeout=10, since=mark)
    client.wait_for_log(f"tunnel to {standby.url}/ is up", timeout=20, since=mark)
    assert _echo_once(local, b"new connection") == b"new connection"
    # the stream of the draining tunnel still works, then ends cleanly
    held.sendall(b"after")
    assert H.recv_exactly(held, 5) == b"after"
    held.close()
    draining.popen.wait(H.scaled(20))
    assert draining.returncode == 0
    # exactly one new tunnel was dialled for the GOAWAY: no double dial
    up_lines = client.log_lines_matching(" is up", since=mark)
    assert len(up_lines) == 1, up_lines
    assert client.alive()
