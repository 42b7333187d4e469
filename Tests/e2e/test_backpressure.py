"""8. Slow reader: backpressure end to end, flat memory in client and server."""

import socket
import threading
import time

import pytest

import e2e_helpers as H

SLOW_RATE = 1 * H.MiB        # bytes/s the target reads during the slow phase
SLOW_SECONDS = 10.0
FAST_SECONDS = 12.0          # the app stops sending after this long in the fast phase
TOTAL = 1 * H.GiB            # the app offers up to this much
RSS_GROWTH_LIMIT = 48 * H.MiB          # max - value at 2 s, during the slow phase, each process
RSS_ABS_GROWTH_LIMIT = 96 * H.MiB      # max during the slow phase - idle value before the transfer
IN_FLIGHT_LIMIT = 128 * H.MiB          # app sent - target read, at the end of the slow phase


@pytest.mark.deadline(90)
def test_slow_reader_backpressure_and_flat_rss(adit, targets, blob):
    pace = lambda t: SLOW_RATE if t < SLOW_SECONDS else None
    # small fixed buffers on the app and target sockets, so that only adit can hold much data
    sink = targets.hash_sink(pace=pace, rcvbuf=256 * H.KiB)
    t = adit.tunnel([sink.port])
    pids = {"client": t.client.pid, "server": t.server.pid}
    time.sleep(0.5)
    idle = {k: H.read_rss_kib(p) * 1024 for k, p in pids.items()}

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * H.KiB)
    s.settimeout(60)
    s.connect(("127.0.0.1", t.ports[0]))

    sampler = H.RssSampler(pids, interval=0.5).start()
    stop = threading.Event()
    progress = H.Progress()
    out = {}

    def sender():
        try:
            out["sent"] = H.send_blob(s, blob, TOTAL, seed=9, progress=progress, stop=stop)
        except BaseException as e:
            out["err"] = e

    th = threading.Thread(target=sender, daemon=True)
    th.start()
    t0 = sampler.t0

    # slow phase
    time.sleep(SLOW_SECONDS - 0.3)
    sent_slow, read_slow = progress.bytes, sink.bytes_in
    in_flight = sent_slow - read_slow
    # fast phase: the target reads at full speed; the app stops offering after FAST_SECONDS
    deadline = time.monotonic() + FAST_SECONDS
    while th.is_alive() and time.monotonic() < deadline:
        th.join(0.2)
    stop.set()
    th.join(60)
    assert not th.is_alive(), "sender still blocked after the target drained"
    assert "err" not in out, f"send failed after {progress.bytes} bytes: {out.get('err')!r}"
    reply = H.read_sink_reply(s)
    s.close()
    sampler.stop()

    print(sampler.table())
    print(f"slow phase: app sent {sent_slow / H.MiB:.1f} MiB, target read {read_slow / H.MiB:.1f} MiB, "
          f"in flight {in_flight / H.MiB:.1f} MiB; total sent {out['sent'][0] / H.MiB:.0f} MiB")

    # backpressure: the app's send blocked instead of adit buffering everything
    assert read_slow <= SLOW_RATE * SLOW_SECONDS * 1.3, "the slow reader read faster than its pace (test bug)"
    assert in_flight < IN_FLIGHT_LIMIT, (
        f"{in_flight / H.MiB:.0f} MiB sent but not yet read after {SLOW_SECONDS:.0f}s of a "
        f"{SLOW_RATE / H.MiB:.0f} MiB/s reader: no backpressure")

    # memory stays flat on both sides during the slow phase
    for name in pids:
        series = sampler.series(name, 0, SLOW_SECONDS)
        assert len(series) >= 10, f"too few RSS samples of {name}"
        peak = max(v for _, v in series) * 1024
        at2 = sampler.value_at(name, 2.0) * 1024
        assert peak - at2 < RSS_GROWTH_LIMIT, (
            f"{name} RSS grew {(peak - at2) / H.MiB:.0f} MiB after t=2s during the slow phase")
        assert peak - idle[name] < RSS_ABS_GROWTH_LIMIT, (
            f"{name} RSS grew {(peak - idle[name]) / H.MiB:.0f} MiB over its idle value during the slow phase")

    # everything the app sent arrived intact
    assert reply == out["sent"], (f"target got {reply[0]} B sha {reply[1][:12]}, "
                                  f"app sent {out['sent'][0]} B sha {out['sent'][1][:12]}")
    assert out["sent"][0] > SLOW_RATE * SLOW_SECONDS, "nothing flowed after the target sped up"
    assert t.client.alive() and t.server.alive()


@pytest.mark.deadline(60)
def test_slow_stream_does_not_block_other_streams(adit, targets, blob):
    """While one stream is stalled by a slow reader, another stream on the same tunnel flows."""
    pace = lambda t: 64 * H.KiB if t < 15 else None
    slow = targets.hash_sink(pace=pace, rcvbuf=128 * H.KiB)
    echo = targets.echo()
    t = adit.tunnel([slow.port, echo.port])

    s = H.connect_local(t.ports[0])
    s.settimeout(60)
    stop = threading.Event()
    progress = H.Progress()
    th = threading.Thread(target=lambda: _swallow(H.send_blob, s, blob, 256 * H.MiB, 10, progress, True, stop),
                          daemon=True)
    th.start()
    time.sleep(2.0)   # the slow stream's window is exhausted by now
    t1 = time.monotonic()
    with H.connect_local(t.ports[1]) as c:
        c.settimeout(10)
        data = blob.bytes(8 * H.MiB, seed=11)
        got = {}
        r = threading.Thread(target=lambda: got.setdefault("d", H.recv_until_eof(c)), daemon=True)
        r.start()
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        r.join(10)
    dt = time.monotonic() - t1
    stop.set()
    try:
        s.shutdown(socket.SHUT_RDWR)   # wakes the sender if it is blocked
    except OSError:
        pass
    s.close()
    th.join(10)
    assert got.get("d") == data
    assert dt < 5, f"8 MiB echo took {dt:.1f}s while another stream was stalled"


def _swallow(fn, *args):
    try:
        fn(*args)
    except OSError:
        pass
