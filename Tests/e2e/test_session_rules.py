"""The session rules of docs/protocol.md, driven by a raw adit.v1 client written here (Python `websockets` plus
the frame layout of §2) against the real `adit server`: HELLO first and version 1 (§3.1: otherwise a protocol
error, the WebSocket closed with 1002), frames for streams never opened (§4: a session protocol error) and for
closed ones (ignored), PING answered by PONG, unknown frame types ignored, text messages closed with 1003 (§1),
and the drain (§3.4): GOAWAY names the last stream accepted, a later OPEN is answered by RESET 5, the streams that
exist finish, and the WebSocket then closes with 1000."""

import signal
import time

import pytest
from websockets.exceptions import ConnectionClosed

import e2e_helpers as H
from e2e_helpers import RawSession, server_hello

SCALE = H.timeout_scale()
FEATURE_REVERSE, FEATURE_DATAGRAMS = 0x1, 0x2


def closed_by_server(e: ConnectionClosed) -> tuple[int, str]:
    assert e.rcvd is not None, f"the connection ended without a close frame from the server ({e})"
    assert e.rcvd_then_sent is not False, "we closed first, the server did not"
    return e.rcvd.code, e.rcvd.reason


@pytest.fixture
def gateway(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--drain-timeout", "30"])
    return server, echo


@pytest.mark.deadline(30)
def test_the_servers_hello_and_ping_pong_and_unknown_frames(gateway):
    server, _ = gateway
    s = RawSession(server.url)
    version, window, max_message, features = server_hello(s)
    assert version == 1
    assert window == 256 * H.KiB, f"initial window {window}, the documented default is 256 KiB (docs/protocol.md §7)"
    assert max_message >= 64 * H.KiB, max_message
    assert features & (FEATURE_REVERSE | FEATURE_DATAGRAMS) == FEATURE_REVERSE | FEATURE_DATAGRAMS, \
        f"adit's server announces REVERSE and DATAGRAMS (features {features:#x})"
    s.send(H.mux_hello())
    # An unknown frame type is ignored; the PING behind it in the same message is answered with its 8 bytes.
    s.send(H.mux_frame(0x7E, 0, b"from a later version"), H.mux_frame(H.MUX_PING, 0, b"\x01adit-e2"))
    assert s.next_frame() == (H.MUX_PONG, 0, 0, b"\x01adit-e2")
    s.send(H.mux_frame(H.MUX_PING, 0, b"87654321"))
    assert s.next_frame() == (H.MUX_PONG, 0, 0, b"87654321")
    s.close()


@pytest.mark.deadline(30)
@pytest.mark.parametrize("first", ["ping", "open", "version-2", "version-0"])
def test_a_session_must_start_with_a_hello_of_version_1(gateway, first):
    """§3.1: a first frame that is not HELLO, or a HELLO whose version is not 1, is a protocol error: the server
    closes the WebSocket with 1002 (and never acts on the frame)."""
    server, echo = gateway
    s = RawSession(server.url)
    server_hello(s)
    s.send({"ping": H.mux_frame(H.MUX_PING, 0, b"12345678"),
            "open": H.mux_frame(H.MUX_OPEN, 1, H.mux_ipv4_target("127.0.0.1", echo.port)),
            "version-2": H.mux_hello(version=2),
            "version-0": H.mux_hello(version=0)}[first])
    frames, e = s.until_closed()
    code, reason = closed_by_server(e)
    assert not [f for f in frames if f[0] in (H.MUX_PONG, H.MUX_OPEN_OK)], f"the server acted on the frame: {frames}"
    assert echo.accepted == 0, "the server connected a stream of a session that never said HELLO"
    server.wait_for_log("tunnel protocol error", timeout=5)
    assert code == 1002, (f"the WebSocket was closed with {code} {reason!r}, docs/protocol.md §3.1 says 1002; "
                          f"frames before the close: {frames}")


@pytest.mark.deadline(30)
def test_a_frame_for_a_stream_never_opened_is_a_session_protocol_error(gateway):
    """§4: a frame for a stream ID above the peer's highest opened ID is a session protocol error (the session
    ends); one for a stream that is already closed is ignored."""
    server, echo = gateway
    s = RawSession(server.url)
    server_hello(s)
    s.send(H.mux_hello(), H.mux_frame(H.MUX_OPEN, 1, H.mux_ipv4_target("127.0.0.1", echo.port)))
    assert s.next_frame()[:3] == (H.MUX_OPEN_OK, 0, 1)
    # Closed stream: we reset it, then send DATA on it; ignored, and the session carries on.
    s.send(H.mux_frame(H.MUX_RESET, 1, b"\x00done"))
    s.send(H.mux_frame(H.MUX_DATA, 1, b"late"), H.mux_frame(H.MUX_PING, 0, b"still-up"))
    assert s.next_frame() == (H.MUX_PONG, 0, 0, b"still-up"), "a frame for a closed stream was not ignored"
    # Never opened: stream 99 is above the highest we opened (1).
    s.send(H.mux_frame(H.MUX_DATA, 99, b"who?"))
    frames, e = s.until_closed()
    code, reason = closed_by_server(e)
    goaways = [f for f in frames if f[0] == H.MUX_GOAWAY]
    protocol_error = code == 1002 or any(len(f[3]) >= 5 and f[3][4] == 6 for f in goaways)
    assert protocol_error, f"the session ended without a protocol error: close {code} {reason!r}, frames {frames}"
    assert "never opened" in server.wait_for_log("tunnel protocol error", timeout=5)
    assert code == 1002, (f"the WebSocket was closed with {code} {reason!r} after a session protocol error; "
                          f"docs/protocol.md §3.1 closes a protocol error with 1002 (frames: {frames})")


@pytest.mark.deadline(30)
def test_a_text_message_closes_with_1003(gateway):
    server, _ = gateway
    s = RawSession(server.url)
    server_hello(s)
    s.send(H.mux_hello())
    s.ws.send("text is not adit.v1")
    _, e = s.until_closed()
    code, _ = closed_by_server(e)
    assert code == 1003, f"closed with {code}, docs/protocol.md §1 says 1003"


@pytest.mark.deadline(60)
def test_goaway_then_an_open_is_reset_5_and_the_open_stream_finishes(gateway):
    """§3.4 with SIGTERM on the server: GOAWAY names stream 1 as the last accepted, OPEN 3 is answered with RESET
    code 5 (and not connected), stream 1 still echoes and half-closes, then the server closes the WebSocket with
    1000 and exits 0 long before its drain timeout."""
    server, echo = gateway
    s = RawSession(server.url)
    server_hello(s)
    s.send(H.mux_hello(), H.mux_frame(H.MUX_OPEN, 1, H.mux_ipv4_target("127.0.0.1", echo.port)))
    assert s.next_frame()[:3] == (H.MUX_OPEN_OK, 0, 1)
    server.signal(signal.SIGTERM)
    ftype, _, stream, payload = s.next_frame()
    assert (ftype, stream) == (H.MUX_GOAWAY, 0), (ftype, stream, payload)
    assert int.from_bytes(payload[:4], "big") == 1, f"GOAWAY names {int.from_bytes(payload[:4], 'big')}, not 1"
    s.send(H.mux_frame(H.MUX_OPEN, 3, H.mux_ipv4_target("127.0.0.1", echo.port)))
    ftype, _, stream, payload = s.next_frame()
    assert (ftype, stream) == (H.MUX_RESET, 3), (ftype, stream, payload)
    assert payload[0] == 5, f"OPEN after GOAWAY reset with code {payload[0]} ({payload[1:]!r}), not 5"
    # The stream that exists goes on: echo through it, then FIN both ways.
    s.send(H.mux_frame(H.MUX_DATA, 1, b"still flowing"))
    got = b""
    while got != b"still flowing":
        ftype, flags, stream, payload = s.next_frame()
        assert (ftype, stream) == (H.MUX_DATA, 1), (ftype, stream, payload)
        got += payload
    s.send(H.mux_frame(H.MUX_DATA, 1, flags=H.MUX_FIN))
    t0 = time.monotonic()
    frames, e = s.until_closed(timeout=20)
    assert (H.MUX_DATA, H.MUX_FIN, 1, b"") in frames, f"the echo's EOF did not come back as FIN: {frames}"
    code, _ = closed_by_server(e)
    assert code == 1000, f"the drained session closed with {code}, not 1000"
    H.wait_until(lambda: server.poll() is not None, 10, what="the server to exit after the drain")
    assert server.returncode == 0
    assert time.monotonic() - t0 < 15 * SCALE, "the server waited for its drain timeout with no stream left"
    assert echo.accepted == 1, f"{echo.accepted} connections to the target: OPEN 3 was connected after GOAWAY"
