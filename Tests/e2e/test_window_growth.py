"""Receive windows sized from measurement (issue 10, docs/protocol.md §7): through a long path (the user-space
delay line, Tests/tools/delayline.c) a window-limited stream grows its window past the initial 256 KiB, within
`--window`, and every byte arrives; a stream whose target reads slowly keeps the initial window."""
import json
import threading
import time
import urllib.request

import pytest

import e2e_helpers as H

KiB, MiB = H.KiB, H.MiB
INITIAL = 256 * KiB


def window_sampler(admin_port: int, samples: list, stop: threading.Event) -> threading.Thread:
    """Polls the server's /status.json every 50 ms: (time, its sessions' receive windows together)."""
    def run():
        while not stop.wait(0.05):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/status.json", timeout=2) as r:
                    status = json.load(r)
                samples.append((time.monotonic(), sum(s["receiveWindowBytes"] for s in status["sessions"])))
            except OSError:
                pass
    th = threading.Thread(target=run, daemon=True)
    th.start()
    return th


def upload_through_a_long_path(adit, blob, sink, total: int, seed: int, server_extra=()) -> tuple:
    """Uploads `total` bytes through -L, the client reaching the server through a 40 ms, 200 Mbit/s delay line,
    while the server's receive windows are sampled. Returns (what the app sent, the target's reply, samples,
    when the upload began)."""
    admin = H.free_port()
    server = adit.server([f"127.0.0.1:{sink.port}"], extra=["--admin", f"127.0.0.1:{admin}", *server_extra])
    line = H.DelayLine(server.port, rtt_ms=40, rate_mbit=200)
    try:
        local = H.free_port()
        client = adit.client(f"ws://127.0.0.1:{line.port}", [(local, "127.0.0.1", sink.port)])
        client.wait_for_log("is up", timeout=H.scaled(15))
        samples: list = []
        stop = threading.Event()
        sampler = window_sampler(admin, samples, stop)
        t0 = time.monotonic()
        with H.connect_local(local) as s:
            s.settimeout(H.scaled(60))
            sent = H.send_blob(s, blob, total, seed=seed)
            reply = H.read_sink_reply(s)
        stop.set()
        sampler.join()
        return sent, reply, samples, t0
    finally:
        line.stop()


@pytest.mark.deadline(120)
def test_a_window_limited_upload_grows_its_window_through_a_long_path(adit, targets, blob):
    """40 ms and 200 Mbit/s: the path holds 1 MB, four times the initial window, so the upload is held back
    by its window until the server's receive window grows. It must grow (past 256 KiB, at most --window 8M)
    and the 48 MiB must arrive intact."""
    sink = targets.hash_sink()
    total = 48 * MiB
    sent, reply, samples, _ = upload_through_a_long_path(adit, blob, sink, total, seed=7,
                                                         server_extra=["--window", "8M"])
    assert sent == (total, blob.digest(total, seed=7)[1])
    assert reply == sent, "the target's count/hash differ from what the app sent"
    largest = max((w for _, w in samples), default=0)
    print(f"server receive windows: largest {largest / KiB:.0f} KiB over {len(samples)} samples")
    assert len(samples) >= 5, "the status page was not sampled during the transfer"
    assert largest > INITIAL, f"the window never grew past the initial {INITIAL // KiB} KiB on a 1 MB path"
    assert largest <= 8 * MiB + 2 * INITIAL, f"a window of {largest} B: --window 8M is the cap"


@pytest.mark.deadline(90)
def test_a_slow_reader_keeps_the_initial_window_on_a_long_path(adit, targets, blob):
    """The same path, but the target reads 1 MiB/s, a fraction of what the initial window carries per round
    trip. While the kernel's buffers towards the target fill, the stream looks fast and its window may grow.
    Once they are full, the kernel takes more only in bursts (Linux wakes a writer when a third of its send
    buffer is free), after stalls of many round trips: a burst may grow the window again for its few round
    trips (the bytes do move at path speed then), and the stall after it puts the window back at the initial
    256 KiB. So a slow reader's window stays near the initial one, typically 256-600 KiB (a window that never
    went back after a stall sat at 0.8-1.5 MiB here), far from what a window-limited stream reaches: memory
    stays bounded for slow streams. The figures depend on the kernel's buffer sizes, hence the margins."""
    # A small receive buffer at the target, so that the kernel between the server and the target cannot
    # take megabytes at full speed and pass for a fast application.
    sink = targets.hash_sink(pace=lambda elapsed: 1 * MiB, rcvbuf=64 * KiB)
    sent, reply, samples, t0 = upload_through_a_long_path(adit, blob, sink, 6 * MiB, seed=8)
    assert reply == sent
    settled = [w for t, w in samples if t - t0 >= 2.0 and w > 0]
    at_initial = sum(1 for w in settled if w <= INITIAL)
    median = sorted(settled)[len(settled) // 2] if settled else 0
    print(f"server receive windows: largest {max(w for _, w in samples) / KiB:.0f} KiB; after 2 s "
          f"{sorted(set(settled))} over {len(settled)} samples, {at_initial} at the initial window, "
          f"median {median / KiB:.0f} KiB")
    assert len(settled) >= 20, "too few samples after the first two seconds"
    assert median <= 3 * INITIAL, f"a slow reader's window stayed large: median {median} B, {sorted(set(settled))}"
    assert max(settled) <= 8 * INITIAL, f"a slow reader's window grew to {max(settled)} B after the buffers filled"
