"""6. Server killed mid-transfer; client reconnects. Also: the client listens before the server is up."""

import signal
import socket
import threading
import time

import pytest

import e2e_helpers as H


def _wait_tunnel_back(port, timeout, client):
    waited = H.wait_tunnel_ready(port, timeout=timeout, proc=client)
    print(f"tunnel usable again after {waited:.1f}s")
    return waited


@pytest.mark.deadline(90)
def test_server_killed_mid_transfer(adit, targets, blob):
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    port = t.server.port

    s = H.connect_local(t.ports[0])
    s.settimeout(30)
    stop = threading.Event()
    sent = H.Progress()

    def sender():
        try:
            H.send_blob(s, blob, 64 * H.GiB, seed=7, progress=sent, shut_wr=False, stop=stop)
        except OSError as e:
            sent.error = e

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    # read until some data has made the round trip: the transfer is in flight
    received = 0
    buf = bytearray(H.MiB)
    while received < 8 * H.MiB:
        n = s.recv_into(buf)
        assert n, f"EOF after {received} bytes before the server was killed"
        received += n

    mark = t.client.log_mark()
    t.server.signal(signal.SIGKILL)
    t.server.popen.wait(10)
    killed_at = time.monotonic()

    # the in-flight local connection must end (EOF or reset), not hang
    how = None
    s.settimeout(1)
    while how is None:
        if time.monotonic() - killed_at > 10:
            stop.set()
            pytest.fail(f"local connection still open 10s after the server was killed "
                        f"(received {received} B, sent {sent.bytes} B)")
        try:
            n = s.recv_into(buf)
            if n == 0:
                how = "eof"
            received += n
        except (ConnectionResetError, BrokenPipeError):
            how = "reset"
        except socket.timeout:
            continue
    closed_after = time.monotonic() - killed_at
    stop.set()
    th.join(10)
    s.close()
    print(f"in-flight connection ended by {how} {closed_after:.2f}s after SIGKILL "
          f"(sent {sent.bytes} B, received {received} B)")
    assert closed_after < 5, f"in-flight connection closed only {closed_after:.1f}s after the server died"

    line = t.client.wait_for_log("tunnel lost", timeout=5, since=mark)
    print(f"client logged: {line}")
    time.sleep(0.5)
    assert t.client.alive(), f"client exited with {t.client.returncode} after losing the tunnel"

    # the listener keeps accepting while the server is down (the connection is then closed)
    with socket.create_connection(("127.0.0.1", t.ports[0]), timeout=3) as c:
        c.settimeout(10)
        c.sendall(b"anyone there?")
        try:
            H.wait_closed(c, timeout=10)
        except AssertionError:
            pass   # holding it until the tunnel is back is also acceptable

    # restart the server on the same port; a new connection works again
    server2 = adit.server(allow=_same_allow(t), port=port)
    _wait_tunnel_back(t.probe_port, timeout=15, client=t.client)
    with H.connect_local(t.ports[0]) as c:
        c.settimeout(10)
        data = blob.bytes(4 * H.MiB, seed=8)
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        got = H.recv_until_eof(c)
        assert got == data
    assert t.client.alive() and server2.alive()


def _same_allow(t):
    """The --allow arguments the first server was started with."""
    argv = t.server.argv
    return [argv[i + 1] for i, a in enumerate(argv) if a == "--allow"]


@pytest.mark.deadline(60)
def test_client_listens_before_server_is_up(adit, targets):
    echo = targets.echo()
    port = H.free_port()
    lport = H.free_port()
    client = adit.client(f"ws://127.0.0.1:{port}", [(lport, "127.0.0.1", echo.port)])   # waits for its listener
    time.sleep(1.0)
    assert client.alive(), f"client exited with {client.returncode} while the server was not up"
    assert H.port_accepts(lport)
    adit.server(allow=[f"127.0.0.1:{echo.port}"], port=port)
    _wait_tunnel_back(lport, timeout=15, client=client)


@pytest.mark.deadline(90)
def test_server_restarted_twice(adit, targets):
    """Repeated loss and recovery; the client neither exits nor leaks its listener."""
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    allow = _same_allow(t)
    server = t.server
    for round_ in range(2):
        server.signal(signal.SIGKILL)
        server.popen.wait(10)
        H.wait_until(lambda: len(t.client.log_lines_matching("tunnel lost")) >= round_ + 1, timeout=5,
                     what=f"'tunnel lost' logged {round_ + 1} time(s)")
        time.sleep(0.5)
        assert t.client.alive()
        server = adit.server(allow=allow, port=t.server.port)
        _wait_tunnel_back(t.ports[0], timeout=15, client=t.client)
    assert len(t.client.log_lines_matching("tunnel lost")) >= 2
