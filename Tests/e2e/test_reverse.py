"""-R: the server listens on BIND:PORT for the client, and every connection it accepts comes back through the
tunnel to HOST:HOSTPORT on the client's side. The server must allow the bind (--allow-reverse); a listener lives
exactly as long as its tunnel session.

Most clients here also carry the suite's probe forward (-L to an echo server): it tells when the tunnel is up,
independently of -R. test_reverse_only_client checks a client with nothing but -R."""

import re
import signal
import socket
import threading
import time

import pytest

import e2e_helpers as H

LISTENS = "the server listens on"


# ---------------------------------------------------------------------------
# helpers



def start_server(adit, probe, allow_reverse=("127.0.0.1:*",), port=None, allow=()):
    extra = []
    for pattern in allow_reverse:
        extra += ["--allow-reverse", pattern]
    return adit.server([f"127.0.0.1:{probe.port}", *allow], port=port, extra=extra)


def start_client(adit, server, probe, reverses, extra=()):
    """A client with the given -R specs plus a probe -L; returns once an echo went through the probe."""
    probe_port = H.free_port()
    args = []
    for spec in reverses:
        args += ["-R", spec]
    client = adit.client(server.url, [(probe_port, "127.0.0.1", probe.port)], extra=args + list(extra))
    H.wait_tunnel_ready(probe_port, timeout=15, proc=client)
    client.probe_port = probe_port
    return client


def wait_reverse_listening(client, rport, since=0, timeout=10.0, udp=False):
    """The client's log line saying the server bound 127.0.0.1:rport for it."""
    line = client.wait_for_log(f"{LISTENS} 127.0.0.1:{rport}{'/udp' if udp else ''} for -R", timeout, since)
    assert H.port_listening(rport) or udp, f"the client logged {line!r} but nothing listens on {rport}"
    return line


def echo_through(port, n=5000, tag=b""):
    data = tag + bytes(i % 251 for i in range(n))
    with H.connect_local(port) as s:
        s.settimeout(H.scaled(10))
        s.sendall(data)
        assert H.recv_exactly(s, len(data)) == data
        s.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(s) == b""


# ---------------------------------------------------------------------------
# tests


@pytest.mark.deadline(40)
def test_reverse_only_client(adit, targets):
    """`adit client URL -R PORT:HOST:HOSTPORT` alone (no -L, -D, …) keeps its tunnel and serves the port."""
    echo = targets.echo()
    rport = H.free_port()
    server = adit.server([], extra=["--allow-reverse", f"127.0.0.1:{rport}"])
    client = adit.client(server.url, [], wait=False, extra=["-R", f"{rport}:127.0.0.1:{echo.port}"])
    wait_reverse_listening(client, rport, timeout=15)
    echo_through(rport)
    echo.wait_results(1, timeout=5)
    assert echo.accepted == 1
    assert client.alive(), f"a client with only -R exited with {client.returncode}"
    # The server's access log has the reverse connection: where it came from, the listener, 5000 B each way.
    line = server.wait_for_log("access: reverse connection from 127.0.0.1:", timeout=10)
    assert f"on 127.0.0.1:{rport} finished, 5000 B from the client, 5000 B to it" in line, line
    assert "direction=reverse" in line, line


@pytest.mark.deadline(40)
def test_reverse_echo_both_ways(adit, targets, monkeypatch):
    """Bytes both ways and half-close through -R; the client's debug log names the server-side peer."""
    echo, probe = targets.echo(), targets.echo()
    rport = H.free_port()
    server = start_server(adit, probe, allow_reverse=[f"127.0.0.1:{rport}"])
    with monkeypatch.context() as m:
        m.setenv("ADIT_E2E_LOG_LEVEL", "debug")
        client = start_client(adit, server, probe, [f"127.0.0.1:{rport}:127.0.0.1:{echo.port}"])
    line = wait_reverse_listening(client, rport)
    print(f"client: {line}")
    server.wait_for_log(f"reverse listener on 127.0.0.1:{rport}", timeout=5)

    messages = [b"a", b"hello reverse\n", bytes(range(256)), b"\x00" * 7, "ünïcödé ✓".encode(),
                bytes(range(255, -1, -1)) * 400]
    with H.connect_local(rport) as s:
        s.settimeout(H.scaled(10))
        app_addr = s.getsockname()
        for msg in messages:
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
        for i in range(50):
            msg = f"ping {i:03d} ".encode() * (i + 1)
            s.sendall(msg)
            assert H.recv_exactly(s, len(msg)) == msg
        s.shutdown(socket.SHUT_WR)          # half-close: the echo target sees EOF and answers with its own
        assert H.recv_until_eof(s) == b""
    echo.wait_results(1, timeout=5)
    assert echo.accepted == 1
    assert echo.results[0] == sum(map(len, messages)) + sum(len(f"ping {i:03d} ".encode()) * (i + 1)
                                                            for i in range(50))
    peer = f"{app_addr[0]}:{app_addr[1]}"
    hit = client.wait_for_log("reverse connection", timeout=5)
    print(f"client debug: {hit}")
    assert peer in hit, f"the client's debug log does not name the server-side peer {peer}: {hit!r}"
    assert f"127.0.0.1:{echo.port}" in hit


@pytest.mark.deadline(60)
def test_reverse_64mib_each_way(adit, targets, blob):
    """64 MiB app → server port → client-side hash sink, and 64 MiB client-side source → app, at the same
    time; byte counts and SHA-256 equal at both ends."""
    total = 64 * H.MiB
    probe, sink, source = targets.echo(), targets.hash_sink(), targets.source(blob, total, seed=12)
    up_port, down_port = H.free_port(), H.free_port()
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"{up_port}:127.0.0.1:{sink.port}",
                                                f"{down_port}:127.0.0.1:{source.port}"])
    wait_reverse_listening(client, up_port)
    wait_reverse_listening(client, down_port)

    out = {}

    def upload():
        try:
            with H.connect_local(up_port) as s:
                s.settimeout(H.scaled(30))
                out["sent"] = H.send_blob(s, blob, total, seed=11)
                out["reply"] = H.read_sink_reply(s)
        except BaseException as e:
            out["up_error"] = e

    def download():
        try:
            with H.connect_local(down_port) as s:
                s.settimeout(H.scaled(30))
                out["got"] = H.recv_all_hash(s)
                s.shutdown(socket.SHUT_WR)
        except BaseException as e:
            out["down_error"] = e

    t0 = time.monotonic()
    threads = [threading.Thread(target=f, daemon=True) for f in (upload, download)]
    for t in threads:
        t.start()
    H.join_all(threads, timeout=45)
    elapsed = time.monotonic() - t0
    assert not any(t.is_alive() for t in threads), f"transfer still running after {H.scaled(45):g} s: {out}"
    assert "up_error" not in out, f"upload failed: {out['up_error']!r} (sink got {sink.bytes_in} B)"
    assert "down_error" not in out, f"download failed: {out['down_error']!r}"
    print(f"-R 64 MiB each way at once in {elapsed:.1f}s ({2 * total / H.MiB / elapsed:.0f} MiB/s total)")

    expected_up = blob.digest(total, seed=11)
    assert out["sent"] == expected_up
    assert out["reply"] == expected_up, "the client-side sink's count/hash differ from what the app sent"
    sink.wait_results(1, timeout=10)
    assert sink.results == [expected_up]
    source.wait_results(1, timeout=10)
    expected_down = blob.digest(total, seed=12)
    assert source.results == [expected_down]
    assert out["got"][0] == total, f"app received {out['got'][0]} of {total} bytes"
    assert out["got"] == expected_down, "byte counts equal but SHA-256 differs: data corrupted"


@pytest.mark.deadline(40)
def test_reverse_listener_released_on_client_kill(adit, targets):
    """kill -9 of the client: within 1 s the server's port refuses connections and can be bound again, and a
    connection in flight through it ends."""
    echo, probe = targets.echo(), targets.echo()
    rport = H.free_port()
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"{rport}:127.0.0.1:{echo.port}"])
    wait_reverse_listening(client, rport)
    echo_through(rport)
    inflight = H.connect_local(rport)
    inflight.settimeout(H.scaled(10))
    inflight.sendall(b"in flight")
    assert H.recv_exactly(inflight, 9) == b"in flight"

    mark = server.log_mark()
    t0 = time.monotonic()
    client.signal(signal.SIGKILL)   # the session ends abruptly: its listeners close without a goodbye
    released_after, last = None, "not checked"
    while time.monotonic() - t0 < H.scaled(5):
        last = H.tcp_port_released(rport)
        if last is None:
            released_after = time.monotonic() - t0
            break
        time.sleep(0.01)
    client.popen.wait(H.scaled(5))
    assert released_after is not None, (f"port {rport} still taken {H.scaled(5):g} s after kill -9 of the client "
                                        f"({last})")
    print(f"port {rport} free {released_after * 1000:.0f} ms after kill -9 of the client")
    # the promise is 1 s; the check allows 1 s times ADIT_E2E_TIMEOUT_SCALE for slow builds and loaded machines
    assert released_after < H.scaled(1.0), (f"the server released port {rport} only {released_after:.2f}s after "
                                            f"the client was killed (limit 1 s, scaled {H.scaled(1.0):g} s)")
    how, _ = H.wait_closed(inflight, timeout=5)
    inflight.close()
    print(f"in-flight connection ended by {how}")
    line = server.wait_for_log("tunnel closed", timeout=5, since=mark)
    print(f"server: {line}")
    assert server.alive()


@pytest.mark.deadline(40)
def test_reverse_rebound_after_server_restart(adit, targets):
    """The server dies and a new one starts on the same port: the client reconnects, asks again, and the
    reverse port works again."""
    echo, probe = targets.echo(), targets.echo()
    rport = H.free_port()
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"{rport}:127.0.0.1:{echo.port}"])
    wait_reverse_listening(client, rport)
    echo_through(rport)

    mark = client.log_mark()
    server.signal(signal.SIGKILL)
    server.popen.wait(H.scaled(5))
    client.wait_for_log("tunnel lost", timeout=5, since=mark)
    assert H.tcp_port_released(rport) is None, "the reverse port is still taken with the server dead"

    t0 = time.monotonic()
    server2 = start_server(adit, probe, port=server.port)
    line = wait_reverse_listening(client, rport, since=mark, timeout=20)
    print(f"re-bound {time.monotonic() - t0:.1f}s after the restart: {line}")
    echo_through(rport, tag=b"after restart ")
    assert echo.accepted == 2
    server2.wait_for_log(f"reverse listener on 127.0.0.1:{rport}", timeout=5)
    assert client.alive() and server2.alive()


def _outside(lo, hi):
    while True:
        p = H.free_port()
        if not lo <= p <= hi:
            return p


@pytest.mark.deadline(40)
@pytest.mark.parametrize("case", ["no-rule", "outside-range", "other-host"])
def test_reverse_bind_not_allowed(adit, targets, case):
    """A bind that no --allow-reverse rule matches: the server logs the refusal, the client says the server
    refused and why, nothing listens, and the tunnel (and an allowed -R beside it) keeps working."""
    echo, probe = targets.echo(), targets.echo()
    ok_port = H.free_port()
    if case == "no-rule":          # denied by default
        rules, bind, denied_port = [], "127.0.0.1", H.free_port()
    elif case == "outside-range":  # a port range that does not contain the port
        lo, hi = max(20000, ok_port - 5), ok_port + 5
        rules, bind, denied_port = [f"127.0.0.1:{lo}-{hi}"], "127.0.0.1", _outside(lo, hi)
    else:                          # the port is allowed, but on another address
        denied_port = H.free_port()
        rules, bind = [f"127.0.0.1:{ok_port}", f"127.0.0.1:{denied_port}"], "[::1]"
    server = start_server(adit, probe, allow_reverse=rules)
    specs = [f"{bind}:{denied_port}:127.0.0.1:{echo.port}"]
    if rules:
        specs.append(f"127.0.0.1:{ok_port}:127.0.0.1:{echo.port}")
    client = start_client(adit, server, probe, specs)

    sline = server.wait_for_log("reverse listener refused", timeout=10)
    cline = client.wait_for_log("the server refused to listen", timeout=10)
    print(f"server: {sline}\nclient: {cline}")
    assert f"127.0.0.1:{denied_port}" in sline or f"::1]:{denied_port}" in sline, sline
    assert "--allow-reverse" in sline, f"the server's message does not say which rule is missing: {sline!r}"
    assert str(denied_port) in cline and "not allowed by policy" in cline, cline
    assert "--allow-reverse" in cline, f"the client's message does not say which rules refused: {cline!r}"
    assert not H.port_listening(denied_port), f"port {denied_port} is listening although refused"
    assert H.tcp_port_released(denied_port) is None
    if case == "other-host":
        with pytest.raises(OSError):
            socket.create_connection(("::1", denied_port), timeout=H.scaled(1)).close()
    if rules:
        wait_reverse_listening(client, ok_port)
        echo_through(ok_port)
    assert H.make_probe(client.probe_port), "the tunnel stopped working after a refused -R"
    assert client.alive() and server.alive()


@pytest.mark.deadline(40)
def test_reverse_port_taken_by_second_client(adit, targets):
    """A second client asking for a port another client's -R holds gets 'already in use'; the first keeps
    its listener, and connections still reach the first client's target."""
    probe, echo_a, echo_b = targets.echo(), targets.echo(), targets.echo()
    rport = H.free_port()
    server = start_server(adit, probe)
    client_a = start_client(adit, server, probe, [f"{rport}:127.0.0.1:{echo_a.port}"])
    wait_reverse_listening(client_a, rport)
    echo_through(rport)

    client_b = start_client(adit, server, probe, [f"{rport}:127.0.0.1:{echo_b.port}"])
    cline = client_b.wait_for_log("already in use", timeout=10)
    print(f"second client: {cline}")
    assert str(rport) in cline and "refused to listen" in cline, cline
    sline = server.wait_for_log(f"reverse listener refused: 127.0.0.1:{rport} is already in use", timeout=5)
    print(f"server: {sline}")
    assert not client_b.log_lines_matching(f"{LISTENS} 127.0.0.1:{rport}")

    for i in range(3):
        echo_through(rport, tag=f"still A {i} ".encode())
    echo_a.wait_results(4, timeout=5)
    assert echo_a.accepted == 4 and echo_b.accepted == 0, \
        f"connections went to the wrong client (A: {echo_a.accepted}, B: {echo_b.accepted})"
    assert client_a.alive() and server.alive()


@pytest.mark.deadline(40)
def test_reverse_port_taken_by_another_program(adit, targets):
    """The port is held by some other program on the server's host: 'already in use' on the client."""
    probe, echo = targets.echo(), targets.echo()
    holder = targets.echo()          # a plain listener that holds the port
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"{holder.port}:127.0.0.1:{echo.port}"])
    cline = client.wait_for_log("already in use", timeout=10)
    print(f"client: {cline}")
    assert str(holder.port) in cline
    assert holder.accepted == 0 and echo.accepted == 0
    assert H.make_probe(client.probe_port)


@pytest.mark.deadline(40)
def test_reverse_port_zero(adit, targets):
    """-R 0:HOST:PORT: the server picks the port; the client logs it, and it works."""
    echo, probe = targets.echo(), targets.echo()
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"0:127.0.0.1:{echo.port}"])
    line = client.wait_for_log(LISTENS, timeout=10)
    print(f"client: {line}")
    m = re.search(r"listens on 127\.0\.0\.1:(\d+) for -R: connections come back to 127\.0\.0\.1:(\d+)", line)
    assert m, f"unexpected log line: {line!r}"
    port = int(m.group(1))
    assert port != 0 and int(m.group(2)) == echo.port
    assert H.port_listening(port)
    server.wait_for_log(f"reverse listener on 127.0.0.1:{port} ", timeout=5)
    echo_through(port)
    echo.wait_results(1, timeout=5)
    assert echo.accepted == 1


@pytest.mark.deadline(40)
def test_reverse_target_refused_on_client_side(adit, targets):
    """Nothing listens at the -R target on the client's side: the connection to the server's port is aborted
    promptly with no data, the client logs why, and the listener stays for the next connection."""
    probe = targets.echo()
    dead = H.free_port()
    rport = H.free_port()
    server = start_server(adit, probe)
    client = start_client(adit, server, probe, [f"{rport}:127.0.0.1:{dead}"])
    wait_reverse_listening(client, rport)
    t0 = time.monotonic()
    how, data = H.refused_locally(rport, timeout=5, send=b"hello?")
    dt = time.monotonic() - t0
    print(f"ended by {how} after {dt:.3f}s")
    assert data == b"" and how == "reset", f"expected an abort without data, got {how} with {len(data)} bytes"
    assert dt < H.scaled(2.0), f"aborted only after {dt:.2f}s: not promptly (2 s, scaled {H.scaled(2.0):g} s)"
    line = client.wait_for_log("could not reach", timeout=5)
    print(f"client: {line}")
    assert f"127.0.0.1:{dead}" in line
    assert H.port_listening(rport)
