"""4. Half-close in both directions."""

import hashlib
import socket
import time

import pytest

import e2e_helpers as H


def _reply_after_eof_handler(conn, server):
    """Read until EOF; only then send a reply that depends on what was read: 1 MiB + its hash."""
    data = H.recv_until_eof(conn)
    eof_at = time.monotonic()
    body = hashlib.sha256(data).digest() * (H.MiB // 32)   # 1 MiB, derived from the request
    reply = f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode() + body
    conn.sendall(reply)
    conn.shutdown(socket.SHUT_WR)
    return {"request": data, "reply": reply, "eof_at": eof_at}


@pytest.mark.deadline(45)
def test_app_half_close_target_sees_eof_and_reply_flows_back(adit, targets, blob):
    target = targets.custom("reply-after-eof", _reply_after_eof_handler)
    t = adit.tunnel([target.port])
    request = blob.bytes(3 * H.MiB + 17, seed=4)
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(15))
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        shut_at = time.monotonic()
        # the target only answers after it saw EOF, so receiving the reply proves EOF was delivered
        reply = H.recv_until_eof(s)
    target.wait_results(1, timeout=5)
    assert not target.errors
    r = target.results[0]
    assert len(r["request"]) == len(request) and r["request"] == request, "target got the request wrong"
    assert r["eof_at"] - shut_at < H.scaled(5), "EOF reached the target late (more than 5 s, scaled)"
    assert len(reply) == len(r["reply"]), f"app got {len(reply)} of {len(r['reply'])} reply bytes"
    assert reply == r["reply"]


def _send_first_then_read_handler(payload):
    def handler(conn, server):
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)    # target half-closes first
        data = H.recv_until_eof(conn)    # ...and still receives everything the app sends afterwards
        return {"received": data}
    return handler


@pytest.mark.deadline(45)
def test_target_half_close_app_sees_eof_and_can_still_send(adit, targets, blob):
    payload = blob.bytes(2 * H.MiB + 5, seed=5)
    target = targets.custom("send-first", _send_first_then_read_handler(payload))
    t = adit.tunnel([target.port])
    after = blob.bytes(3 * H.MiB + 11, seed=6)
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(15))
        got = H.recv_until_eof(s)    # the target's EOF arrives while our write side is open
        assert got == payload, f"app got {len(got)} of {len(payload)} bytes before EOF"
        s.sendall(after)             # the other direction still flows
        s.shutdown(socket.SHUT_WR)
        # now both directions are closed; the connection ends cleanly
        how, rest = H.wait_closed(s, timeout=5)
        assert rest == b""
    target.wait_results(1, timeout=5)
    assert not target.errors
    received = target.results[0]["received"]
    assert len(received) == len(after), f"target got {len(received)} of {len(after)} bytes after its FIN"
    assert received == after


@pytest.mark.deadline(45)
def test_half_close_with_no_data(adit, targets):
    """Empty streams: the app half-closes at once; the target sees EOF and answers."""
    target = targets.custom("reply-after-eof", _reply_after_eof_handler)
    t = adit.tunnel([target.port])
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(15))
        s.shutdown(socket.SHUT_WR)
        reply = H.recv_until_eof(s)
    target.wait_results(1, timeout=5)
    r = target.results[0]
    assert r["request"] == b""
    assert reply == r["reply"]
