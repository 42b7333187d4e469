"""What an operator meets (issue 9): a side listener that cannot bind is a startup error that ends the process;
the wrong scheme, the wrong path and a service that is not Adit are each named at once by the client (and by the
server, without BoringSSL's raw text); every stream leaves one access-log line with who, what, how much and how it
ended; `--log-format json` writes one JSON object per line."""

import json
import re
import socket
import struct
import subprocess
import threading
import time

import pytest

import e2e_helpers as H


def keygen(adit_bin, tmp_path, name="server"):
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    p = subprocess.run([str(adit_bin), "keygen", "--cert", str(cert), "--key", str(key), "--ip", "127.0.0.1"],
                       capture_output=True, text=True, timeout=H.scaled(20), env=H._child_env())
    assert p.returncode == 0, p.stderr
    return cert, key


class Squatter:
    """Holds a TCP port (listening), as another program would."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------------------------------------------------
# A listener that cannot bind

@pytest.mark.deadline(60)
@pytest.mark.parametrize("command", ["server", "client"])
def test_metrics_on_an_address_in_use_stops_the_program(adit, command):
    """It used to go on without metrics and then ignore SIGTERM (a pod that never terminates)."""
    squatter = Squatter()
    try:
        if command == "server":
            proc = adit.server(["127.0.0.1:9"], wait=False, extra=["--metrics", f"127.0.0.1:{squatter.port}"])
        else:
            server = adit.server(["127.0.0.1:9"])
            proc = adit.client(server.url, [(H.free_port(), "127.0.0.1", 9)], wait=False,
                               extra=["--metrics", f"127.0.0.1:{squatter.port}"])
        H.assert_stops(proc, timeout=10)
        log = proc.log_text()
        assert f"cannot serve metrics on 127.0.0.1:{squatter.port}: the address is already in use" in log, log
        # It never started serving: no "listening"/"forwarding" line came before the error.
        assert "listening on" not in log and "forwarding" not in log, log
    finally:
        squatter.close()


# ---------------------------------------------------------------------------------------------------------
# The wrong scheme, the wrong path, another service

@pytest.mark.deadline(60)
def test_ws_against_a_wss_server_is_named_by_the_server_and_stops_the_client(adit, targets, adit_bin, tmp_path):
    cert, key = keygen(adit_bin, tmp_path)
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--tls-cert", str(cert), "--tls-key", str(key)])
    t0 = time.monotonic()
    client = adit.client(f"ws://127.0.0.1:{server.port}/", [(H.free_port(), "127.0.0.1", echo.port)], wait=False)
    H.assert_stops(client, timeout=10)
    took = time.monotonic() - t0
    log = client.log_text()
    assert "HTTP 400 Bad Request: This Adit server speaks TLS: use a wss:// URL." in log, log
    assert took < H.scaled(5), f"the client took {took:.1f}s to give up"
    assert server.wait_for_log("a client spoke plain HTTP to this wss:// port (ws:// against wss://?)")
    assert len(client.log_lines_matching("cannot use the tunnel server")) == 1, "it must not retry a wrong scheme"


@pytest.mark.deadline(60)
def test_wss_against_a_ws_server_is_named_at_once(adit, targets):
    """It used to be silent for the server's 10 s handshake timeout."""
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    t0 = time.monotonic()
    client = adit.client(f"wss://127.0.0.1:{server.port}/", [(H.free_port(), "127.0.0.1", echo.port)], wait=False,
                         extra=["--insecure"])
    line = client.wait_for_log("the server answered in plain text, not TLS", timeout=10)
    took = time.monotonic() - t0
    assert "use a ws:// URL" in line, line
    assert took < H.scaled(3), f"named only after {took:.1f}s"
    assert server.wait_for_log("a client spoke TLS to this plain ws:// port (wss:// against ws://?): answered 400")


@pytest.mark.deadline(60)
def test_a_wrong_path_stops_the_client_with_the_servers_paths(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--path", "/tunnel"])
    client = adit.client(f"ws://127.0.0.1:{server.port}/wrong", [(H.free_port(), "127.0.0.1", echo.port)],
                         wait=False)
    H.assert_stops(client, timeout=10)
    log = client.log_text()
    assert "HTTP 404 Not Found: No WebSocket endpoint at /wrong; this server serves /tunnel." in log, log
    assert "check the path in the URL" in log, log
    time.sleep(H.scaled(1))
    assert len(server.log_lines_matching("status=404")) == 1, "the client retried a 404"


def serve(handler):
    """A one-connection-at-a-time TCP service on loopback running `handler(conn)`; returns (port, stop)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.2)
    done = threading.Event()

    def loop():
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            try:
                handler(conn)
            except OSError:
                pass
            finally:
                conn.close()

    t = threading.Thread(target=loop, daemon=True)
    t.start()

    def stop():
        done.set()
        t.join(2)
        listener.close()
    return listener.getsockname()[1], stop


def banner(conn):
    conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n")
    conn.settimeout(2)
    conn.recv(1024)


def reset(conn):
    conn.settimeout(2)
    conn.recv(10)
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@pytest.mark.deadline(60)
@pytest.mark.parametrize("service,expected", [
    (banner, "the server's answer is not HTTP (it began \"SSH-2.0-OpenSSH_9.2p1 Debian-2\"): another service listens there"),
    (reset, "reset the connection before answering (is it an Adit server, and is the URL's scheme"),
], ids=["ssh-banner", "reset"])
def test_a_service_that_is_not_adit_is_named_in_a_sentence(adit, service, expected):
    port, stop = serve(service)
    try:
        client = adit.client(f"ws://127.0.0.1:{port}/", [(H.free_port(), "127.0.0.1", 9)], wait=False)
        line = client.wait_for_log("cannot reach the tunnel server", timeout=10)
        assert expected in line, line
        assert "read(descriptor" not in client.log_text() and "errno" not in line, line
    finally:
        stop()


@pytest.mark.deadline(60)
def test_the_servers_tls_failures_are_sentences_without_build_paths(adit, targets, adit_bin, tmp_path):
    cert, key = keygen(adit_bin, tmp_path)
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--tls-cert", str(cert), "--tls-key", str(key),
                                                            "--log-level", "info"])
    client = adit.client(f"wss://127.0.0.1:{server.port}/", [(H.free_port(), "127.0.0.1", echo.port)], wait=False)
    line = server.wait_for_log("TLS handshake with a client failed", timeout=10)
    assert "the client does not trust this server's certificate (TLSV1_ALERT_UNKNOWN_CA)" in line, line
    assert "--ca-file" in line
    for ln in server.log_lines_matching("TLS"):
        assert ".cc:" not in ln and "OPENSSL_internal" not in ln, f"raw BoringSSL text in a log line: {ln}"
    assert "is not trusted" in client.wait_for_log("cannot reach the tunnel server", timeout=10)


# ---------------------------------------------------------------------------------------------------------
# The access log

def access_lines(server):
    return server.log_lines_matching("access: ")


@pytest.mark.deadline(60)
def test_every_stream_leaves_one_access_line_with_bytes_duration_and_ending(adit, targets):
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    H.wait_until(lambda: access_lines(t.server), 10, what="the probe's access line")
    probes = len(access_lines(t.server))
    # 1000 bytes echoed, then a clean close from the client: both ways finished.
    with H.connect_local(t.ports[0]) as s:
        s.sendall(b"x" * 1000)
        assert H.recv_exactly(s, 1000) == b"x" * 1000
        time.sleep(0.3)
        s.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(s) == b""
    lines = H.wait_until(lambda: access_lines(t.server)[probes:] or None, 10, what="the access line")
    assert len(lines) == 1, lines
    line = lines[0]
    assert f"access: stream to 127.0.0.1:{echo.port} finished, 1000 B from the client, 1000 B to it, " in line, line
    seconds = float(line.split(" B to it, ")[1].split(" s")[0])
    assert 0.3 <= seconds < H.scaled(5), line
    assert "user=-" in line and "peer=127.0.0.1:" in line, line
    # A local connection aborted mid-stream: the line says it was reset, with what moved until then.
    with H.connect_local(t.ports[0]) as s:
        s.sendall(b"y" * 10)
        assert H.recv_exactly(s, 10) == b"y" * 10
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    lines = H.wait_until(lambda: access_lines(t.server)[probes + 1:] or None, 10, what="the second access line")
    assert "10 B from the client, 10 B to it" in lines[0] and "closed early by the client" in lines[0], lines[0]


@pytest.mark.deadline(60)
def test_the_access_line_names_the_user(adit, targets, adit_bin, tmp_path):
    out = subprocess.run([str(adit_bin), "token", "carol"], capture_output=True, text=True,
                         timeout=H.scaled(20), env=H._child_env())
    assert out.returncode == 0, out.stderr
    secret = re.search(r"token for carol: (\S+)", out.stdout).group(1)
    digest = re.search(r"token: (sha256:[0-9a-f]{64})", out.stdout).group(1)
    echo = targets.echo()
    users = tmp_path / "users.yaml"
    users.write_text(f"users:\n  - name: carol\n    token: {digest}\n    allow: ['127.0.0.1:{echo.port}']\n")
    server = adit.server([], extra=["--users", str(users)])
    local = H.free_port()
    adit.client(server.url, [(local, "127.0.0.1", echo.port)], env={"ADIT_TOKEN": secret})
    with H.connect_local(local) as s:
        s.sendall(b"hi")
        assert H.recv_exactly(s, 2) == b"hi"
    line = H.wait_until(lambda: access_lines(server) or None, 10, what="the access line")[0]
    assert "user=carol" in line and "2 B from the client, 2 B to it" in line, line
    assert secret not in server.log_text()


# ---------------------------------------------------------------------------------------------------------
# JSON logs

@pytest.mark.deadline(60)
def test_json_logs_parse_line_by_line_with_the_access_fields(adit, targets):
    echo = targets.echo()
    t = adit.tunnel([echo.port], server_extra=["--log-format", "json"], client_extra=["--log-format", "json"])
    with H.connect_local(t.ports[0]) as s:
        s.sendall(b"z" * 300)
        assert H.recv_exactly(s, 300) == b"z" * 300
    H.wait_until(lambda: len(t.server.log_lines_matching('"access: ')) >= 2, 10, what="two access lines")
    for proc in (t.server, t.client):
        # The harness writes a "### argv" header line first; everything adit wrote must be JSON.
        lines = [ln for ln in proc.log_text().splitlines() if ln and not ln.startswith("### ")]
        assert lines, proc.name
        records = [json.loads(ln) for ln in lines]
        for r in records:
            assert {"time", "level", "logger", "message"} <= r.keys(), r
            assert r["time"].endswith("Z") and r["level"] in {"trace", "debug", "info", "notice", "warning", "error"}
    records = [json.loads(ln) for ln in t.server.log_text().splitlines() if '"access: ' in ln]
    mine = [r for r in records if r["target"] == f"127.0.0.1:{echo.port}"]
    assert len(mine) == 1, records
    r = mine[0]
    assert r["bytes_from_client"] == 300 and r["bytes_to_client"] == 300, r      # numbers, not strings
    assert isinstance(r["duration_ms"], int) and r["end"] in {"finished", "closed early by the client"}, r
    assert r["peer"].startswith("127.0.0.1:") and r["user"] == "-", r


def test_a_bad_log_format_is_a_usage_error(adit_bin):
    p = subprocess.run([str(adit_bin), "server", "--allow", "*:*", "--log-format", "xml"], capture_output=True,
                       text=True, timeout=H.scaled(10), env=H._child_env())
    assert p.returncode == 64 and "--log-format 'xml' is not one of text, json" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------------------
# Behind a reverse proxy: X-Forwarded-For from --trusted-proxy only

@pytest.mark.deadline(60)
def test_x_forwarded_for_is_believed_only_from_a_trusted_proxy(adit, targets):
    echo = targets.echo()
    trusting = adit.server([f"127.0.0.1:{echo.port}"],
                           extra=["--trusted-proxy", "127.0.0.1", "--max-sessions-per-address", "1"])
    ignoring = adit.server([f"127.0.0.1:{echo.port}"])

    def client(server, forwarded, wait=True):
        local = H.free_port()
        proc = adit.client(server.url, [(local, "127.0.0.1", echo.port)], wait=wait,
                           extra=["-H", f"X-Forwarded-For: 1.1.1.1, {forwarded}"])
        return proc, local

    def through(local):
        with H.connect_local(local) as s:
            s.sendall(b"ping")
            assert H.recv_exactly(s, 4) == b"ping"

    # Two clients the proxy names differently are two addresses: both get in despite the limit of one each.
    a, la = client(trusting, "198.51.100.9")
    through(la)
    b, lb = client(trusting, "198.51.100.10")
    through(lb)
    lines = H.wait_until(lambda: len(access_lines(trusting)) >= 2 or None, 10, what="two access lines") and \
        access_lines(trusting)
    peers = sorted(ln.split("peer=")[1].split()[0] for ln in lines)
    assert peers == ["198.51.100.10", "198.51.100.9"], lines      # the rightmost entry, not the client's "1.1.1.1"
    assert all("via=127.0.0.1:" in ln for ln in lines), lines
    # A third from an address already in: over the per-address limit, refused 429 by its forwarded address.
    c, _ = client(trusting, "198.51.100.9", wait=False)
    line = trusting.wait_for_log("tunnel refused (429)", timeout=10)
    assert "peer=198.51.100.9" in line, line
    # A server that trusts no proxy ignores the header: the peer is the TCP connection's.
    d, ld = client(ignoring, "198.51.100.9")
    through(ld)
    line = H.wait_until(lambda: access_lines(ignoring) or None, 10, what="the access line")[0]
    assert "peer=127.0.0.1:" in line and "198.51.100.9" not in line and "via=" not in line, line


def test_a_bad_trusted_proxy_is_a_usage_error(adit_bin):
    p = subprocess.run([str(adit_bin), "server", "--allow", "*:*", "--trusted-proxy", "proxy.example"],
                       capture_output=True, text=True, timeout=H.scaled(10), env=H._child_env())
    assert p.returncode == 64, p.stderr
    assert "--trusted-proxy 'proxy.example' must be an IP address or a CIDR range" in p.stderr, p.stderr
