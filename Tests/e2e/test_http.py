"""7. The server's HTTP face: plain GET, WebSocket upgrade without adit.v1, startup log."""

import asyncio
import http.client
import re
import socket

import pytest

import e2e_helpers as H

try:   # websockets >= 13 (new asyncio implementation); `proxy=` exists from 15 on
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import InvalidStatus
    NEW_WS = True
except ImportError:   # e.g. Debian 12's python3-websockets 10.4
    from websockets.client import connect as ws_connect   # type: ignore
    from websockets.exceptions import InvalidStatusCode as InvalidStatus   # type: ignore
    NEW_WS = False


def _connect_kwargs():
    kw = {"open_timeout": H.scaled(5)}
    if NEW_WS:
        import inspect
        if "proxy" in inspect.signature(ws_connect.__init__).parameters:
            kw["proxy"] = None    # never go through $http_proxy, even for 127.0.0.1
    return kw


def _status_of(exc):
    return exc.response.status_code if NEW_WS else exc.status_code


@pytest.fixture
def server(adit):
    return adit.server(allow=["127.0.0.1:*"])


@pytest.mark.deadline(30)
def test_plain_get_gets_short_text_answer(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=H.scaled(5))
    conn.request("GET", "/", headers={"Connection": "close"})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    print(resp.status, resp.reason, dict(resp.getheaders()), body[:200])
    assert resp.status == 426, f"status {resp.status} {resp.reason}"
    ctype = resp.getheader("Content-Type", "")
    assert ctype.lower().startswith("text/plain"), f"Content-Type {ctype!r}"
    assert 0 < len(body) <= 1024, f"body of {len(body)} bytes"
    assert server.alive()


@pytest.mark.deadline(30)
def test_plain_get_raw_socket(server):
    """The same over a raw socket, HTTP/1.0 style: answer then close."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=H.scaled(5)) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        data = H.recv_until_eof(s, limit=64 * H.KiB)
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n")[0]
    assert status_line.startswith(b"HTTP/1.") and b" 426" in status_line, status_line
    assert len(body) <= 1024


@pytest.mark.deadline(30)
def test_websocket_without_subprotocol_gets_400(server):
    async def attempt():
        async with ws_connect(f"ws://127.0.0.1:{server.port}/", **_connect_kwargs()):
            pass

    with pytest.raises(InvalidStatus) as ei:
        asyncio.run(attempt())
    assert _status_of(ei.value) == 400
    if NEW_WS:
        body = ei.value.response.body or b""
        print(ei.value.response.headers, body)
        assert b"adit.v1" in body, f"400 body does not mention adit.v1: {body[:300]!r}"
    assert server.alive()


@pytest.mark.deadline(30)
def test_websocket_with_other_subprotocol_gets_400(server):
    async def attempt():
        async with ws_connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["binary", "adit.v2"],
                              **_connect_kwargs()):
            pass

    with pytest.raises(InvalidStatus) as ei:
        asyncio.run(attempt())
    assert _status_of(ei.value) == 400


@pytest.mark.deadline(30)
def test_websocket_with_adit_v1_is_accepted(server):
    """A standard client offering adit.v1 completes the handshake and gets adit.v1 selected."""
    async def attempt():
        async with ws_connect(f"ws://127.0.0.1:{server.port}/", subprotocols=["adit.v1"],
                              **_connect_kwargs()) as ws:
            return ws.subprotocol

    assert asyncio.run(attempt()) == "adit.v1"
    assert server.alive()


def adit_output(proc: H.AditProcess) -> str:
    """What the adit process itself printed: its log without the harness's `### argv` line(s), which repeat
    the command line (and so every port and --allow pattern given)."""
    return "\n".join(ln for ln in proc.log_text().splitlines() if not ln.startswith("### "))


@pytest.mark.deadline(30)
def test_server_startup_log(adit):
    """The startup line names the listen address and every --allow pattern, in order (judged from adit's own
    output only: the log file begins with the harness's copy of the command line)."""
    allow = ["127.0.0.1:*", "*.example.com:443", "10.0.0.0/8:22", "[::1]:*", "example.org:8080"]
    srv = adit.server(allow=allow)
    srv.wait_for_log("listening on", timeout=5)
    lines = [ln for ln in adit_output(srv).splitlines() if "listening on" in ln]
    assert len(lines) == 1, f"expected one startup line, got {lines}"
    line = lines[0]
    assert f"listening on ws://127.0.0.1:{srv.port}/" in line, f"listen address not in the startup line: {line}"
    m = re.search(r"targets allowed: (.*?); ", line)
    assert m, f"no 'targets allowed: ...;' list in the startup line: {line}"
    assert m.group(1).split(", ") == allow, f"allow patterns in the startup line {m.group(1)!r}, given {allow}"
