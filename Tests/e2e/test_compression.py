"""permessage-deflate on the tunnel and the raw bridge: what is compressed and what is not, the bound on
inflated messages (decompression bombs), RSV1 without an agreement, options and their errors."""

import base64
import signal
import os
import random
import socket
import struct
import subprocess
import time
import zlib

import pytest

import e2e_helpers as H
from test_metrics import scrape, wait_metric
from test_raw_websockets import log_corpus

MiB = H.MiB
EX_USAGE = 64


def metrics_tunnel(adit, targets, server_extra=(), client_extra=(), sink=None, link_mbit=None, request=None):
    """A tunnel with the client's /metrics; with `link_mbit`, the client reaches the server through a delay line
    of that rate (2 ms round trip), stopped at the test's end through `request`."""
    sink_given = sink is not None
    sink = sink or targets.echo()
    client_metrics = H.free_port()
    server = adit.server([f"127.0.0.1:{sink.port}"], extra=list(server_extra))
    url = server.url
    if link_mbit:
        line = H.DelayLine(server.port, rtt_ms=2, rate_mbit=link_mbit)
        request.addfinalizer(line.stop)
        url = f"ws://127.0.0.1:{line.port}"
    local = H.free_port()
    client = adit.client(url, [(local, "127.0.0.1", sink.port)],
                         extra=["--metrics", f"127.0.0.1:{client_metrics}", *client_extra])
    H.wait_for_port(client_metrics, timeout=10, connect=False)
    if sink_given:
        client.wait_for_log("is up", timeout=15)   # a sink answers only after EOF: no echo to wait for
    else:
        H.wait_tunnel_ready(local, timeout=15, proc=client)
    return server, client, local, client_metrics


def echo_through(local: int, payload: bytes) -> None:
    with H.connect_local(local, timeout=10) as s:
        s.settimeout(H.scaled(20))
        sender = __import__("threading").Thread(target=s.sendall, args=(payload,))
        sender.start()
        got = H.recv_exactly(s, len(payload))
        sender.join()
    assert H.sha256_hex(got) == H.sha256_hex(payload)


BEFORE = 'adit_compression_bytes_total{stage="before"}'
AFTER = 'adit_compression_bytes_total{stage="after"}'
SKIPPED = "adit_compression_skipped_bytes_total"


def metric(values: dict[str, float], name: str) -> float:
    """One value of a scrape; a metric that is missing fails the test (it is not taken as 0)."""
    assert name in values, f"metric {name} missing from /metrics; got {sorted(values)}"
    return values[name]


@pytest.mark.deadline(60)
def test_compressible_stream_shrinks_on_the_wire_and_random_is_sent_as_is(adit, targets, request):
    """Through a 40 Mbit/s link, where every byte zlib saves is throughput, `auto` compresses a JSON log (and
    keeps doing so: its level adapts, but never down to sending uncompressed, which moves five times less)."""
    server, client, local, port = metrics_tunnel(adit, targets, link_mbit=40, request=request)
    assert client.wait_for_log("permessage-deflate (we send with window 2^15")
    corpus = log_corpus(16 * MiB, 9)
    echo_through(local, corpus)
    values = wait_metric(port, BEFORE, lambda v: v >= len(corpus) * 0.9)
    assert metric(values, AFTER) < values[BEFORE] / 4, f"compressed only to {values[AFTER] / values[BEFORE]:.2f}"
    # Random data: after a probe or two, auto stops compressing it.
    skipped_before = metric(values, SKIPPED)
    noise = random.Random(3).randbytes(32 * MiB)
    echo_through(local, noise)
    values = wait_metric(port, SKIPPED, lambda v: v - skipped_before >= len(noise) * 0.9)
    assert metric(values, BEFORE) - len(corpus) < len(noise) * 0.05, "auto kept compressing random data"


@pytest.mark.deadline(90)
def test_auto_sends_uncompressed_where_the_link_outruns_zlib(adit, targets):
    """On loopback the link moves far more than zlib compresses (level 5: about 85 MB/s here), so `auto`
    measures each effort and ends up sending the JSON log uncompressed, which is faster; every byte arrives.
    The client's close line names the level it ended at."""
    sink = targets.hash_sink()
    server, client, local, port = metrics_tunnel(adit, targets, sink=sink)
    corpus = log_corpus(96 * MiB, 5)
    with H.connect_local(local, timeout=10) as s:
        s.settimeout(H.scaled(60))
        s.sendall(corpus)
        s.shutdown(socket.SHUT_WR)
        reply = H.read_sink_reply(s)
    assert reply == (len(corpus), H.sha256_hex(corpus)), "the target's count/hash differ from what was sent"
    # Every message is counted either way once the exporter has run (each second); wait for the whole corpus.
    values = wait_metric(port, 'adit_stream_bytes_total{direction="sent"}', lambda v: v >= len(corpus))
    values = wait_metric(port, SKIPPED, lambda v: v + values.get(BEFORE, 0) >= len(corpus))
    before, skipped = metric(values, BEFORE), metric(values, SKIPPED)
    print(f"compressed {before / MiB:.1f} MiB, sent uncompressed {skipped / MiB:.1f} MiB of {len(corpus) / MiB:.0f}")
    assert skipped > len(corpus) / 2, \
        f"auto compressed {before / MiB:.1f} MiB and sent only {skipped / MiB:.1f} MiB uncompressed on loopback"
    client.stop()
    line = client.wait_for_log("tunnel compression:")
    assert "level 0 after" in line, f"the client did not end sending uncompressed: {line}"


@pytest.mark.deadline(60)
def test_always_compresses_random_data_too_and_stays_correct(adit, targets):
    server, client, local, port = metrics_tunnel(adit, targets, client_extra=["--compression", "always",
                                                                              "--compression-level", "1"])
    noise = random.Random(4).randbytes(8 * MiB)
    echo_through(local, noise)
    values = wait_metric(port, BEFORE, lambda v: v >= len(noise))
    assert metric(values, SKIPPED) < 64 * 1024


@pytest.mark.deadline(60)
def test_a_server_with_compression_off_declines_and_the_tunnel_works(adit, targets):
    server, client, local, port = metrics_tunnel(adit, targets, server_extra=["--compression", "off"])
    assert client.wait_for_log("no compression (the server declined)")
    assert server.wait_for_log("compression=off")
    echo_through(local, log_corpus(4 * MiB))
    # Nothing compressed, yet the counters are there (at 0), and the data was counted as sent.
    values = wait_metric(port, 'adit_stream_bytes_total{direction="sent"}', lambda v: v >= 4 * MiB)
    assert metric(values, BEFORE) == 0 and metric(values, AFTER) == 0, values


@pytest.mark.deadline(60)
def test_window_bits_and_no_context_takeover_are_negotiated_and_logged(adit, targets):
    server, client, local, port = metrics_tunnel(
        adit, targets, server_extra=["--window-bits", "11"], client_extra=["--no-context-takeover"])
    line = client.wait_for_log("tunnel to")
    assert "we send with window 2^11, no context takeover; the peer with window 2^11, no context takeover" in line, line
    echo_through(local, log_corpus(8 * MiB, 2))


# ---------------------------------------------------------------------------------------------------------
# A hand-made client: bombs and stray RSV1 bits, which no real library sends.

def handshake(port: int, path: str, protocol: str | None, extensions: str | None) -> tuple[socket.socket, str]:
    """Opens a WebSocket by hand; bytes that came with the 101 are kept for `read_close_code`."""
    s = socket.create_connection(("127.0.0.1", port), timeout=H.scaled(10))
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"]
    if protocol:
        lines.append(f"Sec-WebSocket-Protocol: {protocol}")
    if extensions:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, f"closed during the handshake: {head!r}"
        head += chunk
    raw_head, early = head.split(b"\r\n\r\n", 1)
    text = raw_head.decode()
    assert text.startswith("HTTP/1.1 101"), text
    EARLY[s.fileno()] = early
    return s, text


EARLY: dict[int, bytes] = {}


def masked_frame(payload: bytes, opcode: int = 2, rsv1: bool = False, fin: bool = True) -> bytes:
    first = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", first, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", first, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", first, 0x80 | 127, n)
    mask = os.urandom(4)
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload)) if n < 4096 else \
        (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return header + mask + body


def read_close_code(s: socket.socket, timeout: float = 10) -> int:
    """Reads frames until a close frame; returns its code. `timeout` is scaled."""
    s.settimeout(H.scaled(timeout))
    buf = EARLY.pop(s.fileno(), b"")
    while True:
        while len(buf) < 2:
            chunk = s.recv(65536)
            assert chunk, "connection closed without a close frame"
            buf += chunk
        n = buf[1] & 0x7F
        offset = 2
        if n == 126:
            n, offset = struct.unpack("!H", buf[2:4])[0], 4
        elif n == 127:
            n, offset = struct.unpack("!Q", buf[2:10])[0], 10
        while len(buf) < offset + n:
            chunk = s.recv(65536)
            assert chunk, "connection closed inside a frame"
            buf += chunk
        opcode, payload = buf[0] & 0x0F, buf[offset:offset + n]
        buf = buf[offset + n:]
        if opcode == 8:
            return struct.unpack("!H", payload[:2])[0]


def bomb(size: int) -> bytes:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = bytes(1 << 20)
    out = b"".join(c.compress(chunk) for _ in range(size >> 20)) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


@pytest.mark.deadline(60)
@pytest.mark.parametrize("route", ["raw", "tunnel"])
def test_a_decompression_bomb_closes_1009_and_memory_stays_flat(adit, targets, route):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"],
                         extra=["--raw", f"/raw=127.0.0.1:{echo.port}", "--max-message-size", "1M"])
    path, protocol = ("/raw", None) if route == "raw" else ("/", "adit.v1")
    payload = bomb(512 * MiB)   # 512 MiB of zeros in about half a MiB
    rss_before = server.rss_kib()
    for _ in range(3):
        s, head = handshake(server.port, path, protocol, "permessage-deflate")
        assert "permessage-deflate" in head.lower()
        s.sendall(masked_frame(payload, rsv1=True))
        assert read_close_code(s) == 1009
        s.close()
    assert server.wait_for_log("inflates to more than 1048576 bytes")
    grown = server.rss_kib() - rss_before
    assert grown < 24 * 1024, f"the server grew by {grown} KiB"
    assert server.alive()


@pytest.mark.deadline(30)
@pytest.mark.parametrize("route", ["raw", "tunnel"])
def test_rsv1_without_an_agreement_closes_1002(adit, targets, route):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--raw", f"/raw=127.0.0.1:{echo.port}"])
    path, protocol = ("/raw", None) if route == "raw" else ("/", "adit.v1")
    s, head = handshake(server.port, path, protocol, None)   # nothing offered, nothing agreed
    assert "sec-websocket-extensions" not in head.lower()
    c = zlib.compressobj(6, zlib.DEFLATED, -15)
    s.sendall(masked_frame((c.compress(b"Hello") + c.flush(zlib.Z_SYNC_FLUSH))[:-4], rsv1=True))
    assert read_close_code(s) == 1002
    s.close()
    assert server.wait_for_log("RSV1 set, but permessage-deflate was not negotiated")


@pytest.mark.deadline(30)
def test_a_raw_bridge_to_a_target_the_policy_denies_closes_1011_with_the_reason(adit, targets):
    echo = targets.echo()
    other = H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--raw", f"/denied=127.0.0.1:{other}"])
    assert server.wait_for_log(f"the raw bridge /denied -> 127.0.0.1:{other} is not allowed by any --allow rule")
    s, _ = handshake(server.port, "/denied", None, None)
    assert read_close_code(s) == 1011
    s.close()
    assert server.wait_for_log("not allowed by the server's --allow rules")


BAD_USAGES = [
    ["server", "--allow", "*:*", "--raw", "vnc=127.0.0.1:5900"],
    ["server", "--allow", "*:*", "--raw", "/vnc"],
    ["server", "--allow", "*:*", "--raw", "/vnc=127.0.0.1"],
    ["server", "--allow", "*:*", "--raw", "/vnc=127.0.0.1:0"],
    ["server", "--allow", "*:*", "--raw", "/=127.0.0.1:5900"],
    ["server", "--allow", "*:*", "--raw", "/a=127.0.0.1:1", "--raw", "/a=127.0.0.1:2"],
    ["server", "--allow", "*:*", "--compression", "sometimes"],
    ["server", "--allow", "*:*", "--compression-level", "0"],
    ["server", "--allow", "*:*", "--window-bits", "8"],
    ["client", "ws://127.0.0.1:1", "-L", "1:127.0.0.1:2", "--window-bits", "16"],
    ["client", "ws://127.0.0.1:1", "-L", "1:127.0.0.1:2", "--max-message-size", "lots"],
    ["client", "--raw", "ws://127.0.0.1:1/vnc", "-L", "5901:127.0.0.1:5900"],
]


@pytest.mark.deadline(20)
@pytest.mark.parametrize("args", BAD_USAGES, ids=lambda a: " ".join(a))
def test_compression_and_raw_usage_errors_exit_64_with_a_sentence(adit_bin, args):
    p = subprocess.run([str(adit_bin), *args], capture_output=True, timeout=H.scaled(10), stdin=subprocess.DEVNULL,
                       env=H._child_env())
    err = p.stderr.decode()
    assert p.returncode == EX_USAGE, (p.returncode, err)
    assert "Error:" in err and len(err.strip().splitlines()[0]) > 20, err
    assert not any(m.lower() in err.lower() for m in H.CRASH_MARKERS)


@pytest.mark.deadline(40)
def test_sigterm_lets_raw_bridges_finish_then_closes_them_1001(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--raw", f"/raw=127.0.0.1:{echo.port}",
                                                            "--drain-timeout", "2"])
    s, _ = handshake(server.port, "/raw", None, None)
    server.signal(signal.SIGTERM)
    assert server.wait_for_log("draining 0 tunnel(s) and 1 raw bridge(s)", timeout=5)
    # Still bridging while it drains.
    s.sendall(masked_frame(b"still here"))
    s.settimeout(H.scaled(5))
    got = EARLY.pop(s.fileno(), b"")
    while b"still here" not in got:
        got += s.recv(4096)
    EARLY[s.fileno()] = got[got.index(b"still here") + len(b"still here"):]   # the close may have come along
    assert read_close_code(s, timeout=10) == 1001
    s.close()
    H.wait_until(lambda: not server.alive(), 10, what="the server did not exit after draining")
    assert server.returncode == 0


@pytest.mark.deadline(30)
def test_frames_sent_right_behind_the_request_reach_the_target(adit, targets):
    """RFC 6455 has clients wait for the 101, but some do not: a message and a close sent in the same write as
    the request still reach the raw bridge's target."""
    seen = []

    def recorder(conn, srv):
        data = b""
        conn.settimeout(H.scaled(5))
        try:
            while chunk := conn.recv(4096):
                data += chunk
        except OSError:
            pass
        seen.append(data)

    target = targets.custom("recorder", recorder)
    server = adit.server([f"127.0.0.1:{target.port}"], extra=["--raw", f"/raw=127.0.0.1:{target.port}"])
    s = socket.create_connection(("127.0.0.1", server.port), timeout=H.scaled(10))
    key = base64.b64encode(os.urandom(16)).decode()
    request = (f"GET /raw HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
    s.sendall(request + masked_frame(b"early bird") + masked_frame(b"\x03\xe8", opcode=8))
    H.wait_until(lambda: seen, 10, what="the target saw no connection end")
    assert seen[0] == b"early bird"
    s.close()
