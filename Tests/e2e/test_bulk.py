"""2. 1 GiB each way, SHA-256 and byte counts compared end to end."""

import os
import socket
import threading
import time

import pytest

import e2e_helpers as H

TOTAL = int(os.environ.get("ADIT_E2E_BULK_BYTES", H.GiB))


@pytest.mark.deadline(300)
def test_upload_1gib_app_to_target(adit, targets, blob):
    sink = targets.hash_sink()
    t = adit.tunnel([sink.port])
    progress = H.Progress()
    t0 = time.monotonic()
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(60))  # a stall of 60 s fails the test instead of hanging it
        try:
            sent = H.send_blob(s, blob, TOTAL, seed=1, progress=progress)
        except OSError as e:
            pytest.fail(f"send failed after {progress.bytes} of {TOTAL} bytes "
                        f"(target got {sink.bytes_in}): {e!r}")
        reply = H.read_sink_reply(s)
    elapsed = time.monotonic() - t0
    print(f"upload: {TOTAL / H.MiB:.0f} MiB in {elapsed:.1f}s = {TOTAL / H.MiB / elapsed:.0f} MiB/s")
    assert sent == (TOTAL, blob.digest(TOTAL, seed=1)[1])
    assert reply == sent, "the target's count/hash differ from what the app sent"
    sink.wait_results(1, timeout=10)
    assert sink.results == [sent]
    assert not sink.errors


@pytest.mark.deadline(300)
def test_download_1gib_target_to_app(adit, targets, blob):
    source = targets.source(blob, TOTAL, seed=2)
    t = adit.tunnel([source.port])
    progress = H.Progress()
    t0 = time.monotonic()
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(60))
        try:
            got = H.recv_all_hash(s, progress=progress)
        except OSError as e:
            pytest.fail(f"receive failed after {progress.bytes} of {TOTAL} bytes: {e!r}")
        s.shutdown(socket.SHUT_WR)
    elapsed = time.monotonic() - t0
    print(f"download: {TOTAL / H.MiB:.0f} MiB in {elapsed:.1f}s = {TOTAL / H.MiB / elapsed:.0f} MiB/s")
    source.wait_results(1, timeout=10)
    assert not source.errors
    sent = source.results[0]
    assert sent == (TOTAL, blob.digest(TOTAL, seed=2)[1])
    assert got[0] == sent[0], f"app received {got[0]} bytes, target sent {sent[0]}"
    assert got == sent, "byte counts equal but SHA-256 differs: data corrupted in the tunnel"


@pytest.mark.deadline(300)
def test_bidirectional_256mib_same_stream(adit, targets, blob):
    """Both directions of one stream at full speed at once (echo)."""
    total = min(TOTAL, 256 * H.MiB)
    echo = targets.echo()
    t = adit.tunnel([echo.port])
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(H.scaled(60))
        out = {}

        def sender():
            try:
                out["sent"] = H.send_blob(s, blob, total, seed=3)
            except BaseException as e:
                out["send_error"] = e

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        got = H.recv_all_hash(s)
        th.join(H.scaled(60))
    assert "send_error" not in out, out.get("send_error")
    assert got == out["sent"] == (total, blob.digest(total, seed=3)[1])
