"""Graceful drain: SIGTERM on the server lets open streams finish (GOAWAY), then the server exits 0."""

import signal
import threading
import time

import pytest

import e2e_helpers as H

MiB = H.MiB


@pytest.mark.deadline(60)
def test_sigterm_drains_open_streams_then_exits(adit, targets, blob):
    sink = targets.hash_sink(pace=lambda t: 8 * MiB, rcvbuf=128 * H.KiB)   # ~3 s for 24 MiB
    t = adit.tunnel([sink.port])
    total = 24 * MiB
    outcome = {}

    def transfer():
        with H.connect_local(t.ports[0], timeout=30) as s:
            s.settimeout(H.scaled(30))
            outcome["sent"] = H.send_blob(s, blob, total, seed=7)
            outcome["reply"] = H.recv_until_eof(s)

    worker = threading.Thread(target=transfer)
    worker.start()
    H.wait_until(lambda: sink.bytes_in > 2 * MiB, 10, what="transfer did not start")
    t.server.signal(signal.SIGTERM)
    t.server.wait_for_log("draining", timeout=5)   # it took the SIGTERM, and drains instead of exiting
    assert t.server.alive(), "the server exited before its open stream finished"
    worker.join(timeout=H.scaled(30))
    assert not worker.is_alive()

    count, sha = outcome["sent"]
    assert count == total
    assert outcome["reply"] == f"{total} {sha}\n".encode()      # every byte arrived, in order
    H.wait_until(lambda: not t.server.alive(), 10, what="server did not exit after the drain")
    assert t.server.poll() == 0
    log = t.server.log_text()
    assert "draining" in log
    # The client noticed the drain and says so, without crashing.
    assert t.client.alive()
    assert "draining" in t.client.log_text()
