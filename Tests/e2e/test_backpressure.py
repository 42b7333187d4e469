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

# The largest flow-control window, given explicitly to both sides. `adit --help`: "--window: Largest
# flow-control window per stream and direction ... a stalled stream holds at most this much". Windows start at
# 256 KiB and grow only while the application consumes fast enough (docs/protocol.md §7), so a slow reader's
# stays near 256 KiB; 4 MiB is the bound whatever the tuning does. Credit comes back only when the bytes have
# left adit for the kernel (MuxStreamEndpoint), so the window bounds everything a stream has between the two
# adit processes: read from the app's connection and not yet framed (at most 256 KiB,
# MuxConfiguration.streamReadHighWater), framed and queued, in the tunnel's kernel buffers on both ends,
# received and not yet written to the target.
WINDOW = 4 * H.MiB
WINDOW_ARGS = ["--window", "4M"]
INITIAL_WINDOW = 256 * H.KiB
# What adit may hold beyond the window: the read-ahead of 256 KiB above, one more read in progress, framing.
ADIT_SLACK = 1 * H.MiB
# The test's own sockets get small fixed buffers (SO_SNDBUF on the app's, SO_RCVBUF on the target's; Linux
# doubles the value for its bookkeeping, getsockopt reports the doubled figure) so that little of the data in
# flight can hide outside adit.
APP_SNDBUF = 128 * H.KiB
TARGET_RCVBUF = 128 * H.KiB


def _tcp_queues() -> dict[tuple[int, int], tuple[int, int]]:
    """(local port, remote port) -> (send queue, receive queue) in bytes, of every TCP socket on this host
    (/proc/net/tcp: tx_queue is sent and not acknowledged plus not yet sent, rx_queue received and not read)."""
    out = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    lport = int(fields[1].rsplit(":", 1)[1], 16)
                    rport = int(fields[2].rsplit(":", 1)[1], 16)
                    tx, rx = (int(x, 16) for x in fields[4].split(":"))
                    out[(lport, rport)] = (tx, rx)
        except FileNotFoundError:
            continue
    return out


def _kernel_max(name: str) -> int:
    """The largest buffer TCP autotuning may give a socket (the third figure of net.ipv4.tcp_rmem/tcp_wmem)."""
    with open(f"/proc/sys/net/ipv4/{name}") as f:
        return int(f.read().split()[2])


class Pipeline:
    """The bytes of one stream app -> adit client -> tunnel -> adit server -> target, located by socket."""

    def __init__(self, app: socket.socket, fwd_port: int, target_port: int):
        self.app_port = app.getsockname()[1]
        self.fwd_port = fwd_port
        self.target_port = target_port

    def outside_adit(self) -> dict[str, int]:
        """Bytes of the stream in the kernel buffers at both ends (the four sockets that are not the tunnel);
        a socket that is gone holds nothing."""
        q = _tcp_queues()
        server_side = [k for k in q if k[1] == self.target_port]    # adit server -> target (one connection)
        assert len(server_side) <= 1, f"expected one connection to the target, found {server_side}"
        server_port = server_side[0][0] if server_side else None
        return {
            "app send queue": q.get((self.app_port, self.fwd_port), (0, 0))[0],
            "adit client's receive queue": q.get((self.fwd_port, self.app_port), (0, 0))[1],
            "adit server's send queue": q.get((server_port, self.target_port), (0, 0))[0],
            "target receive queue": q.get((self.target_port, server_port), (0, 0))[1],
        }


@pytest.mark.deadline(90)
def test_slow_reader_backpressure_and_flat_rss(adit, targets, blob):
    pace = lambda t: SLOW_RATE if t < SLOW_SECONDS else None
    # small fixed buffers on the app and target sockets, so that only adit can hold much data
    sink = targets.hash_sink(pace=pace, rcvbuf=TARGET_RCVBUF)
    t = adit.tunnel([sink.port], server_extra=WINDOW_ARGS, client_extra=WINDOW_ARGS)
    pids = {"client": t.client.pid, "server": t.server.pid}
    time.sleep(0.5)   # a moment of quiet before the idle baseline (a measurement, not a wait for an event)
    idle = {k: H.read_rss_kib(p) * 1024 for k, p in pids.items()}

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, APP_SNDBUF)
    s.settimeout(H.scaled(60))
    s.connect(("127.0.0.1", t.ports[0]))
    pipeline = Pipeline(s, t.ports[0], sink.port)
    app_sndbuf = s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)              # 2 x APP_SNDBUF
    target_rcvbuf = sink.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)   # inherited by the accepted one

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

    # slow phase (its length is the experiment, not a wait for an event)
    time.sleep(SLOW_SECONDS - 0.3)
    sent_slow, read_slow = progress.bytes, sink.bytes_in
    queues = pipeline.outside_adit()
    stalled = th.is_alive() and not progress.done
    in_flight = sent_slow - read_slow
    # fast phase: the target reads at full speed; the app stops offering after FAST_SECONDS
    deadline = time.monotonic() + FAST_SECONDS
    while th.is_alive() and time.monotonic() < deadline:
        th.join(0.2)
    stop.set()
    th.join(H.scaled(60))
    assert not th.is_alive(), "sender still blocked after the target drained"
    assert "err" not in out, f"send failed after {progress.bytes} bytes: {out.get('err')!r}"
    reply = H.read_sink_reply(s)
    s.close()
    sampler.stop()

    print(sampler.table())
    held_by_adit = in_flight - sum(queues.values())
    print(f"slow phase: app sent {sent_slow / H.MiB:.1f} MiB, target read {read_slow / H.MiB:.1f} MiB, "
          f"in flight {in_flight / H.MiB:.2f} MiB = " +
          " + ".join(f"{k} {v / H.MiB:.2f}" for k, v in queues.items()) +
          f" + between the adit processes {held_by_adit / H.MiB:.2f} MiB; "
          f"total sent {out['sent'][0] / H.MiB:.0f} MiB")

    # The slow stream stalled: after the slow phase the app was still blocked in send, far from done.
    assert read_slow <= SLOW_RATE * SLOW_SECONDS * 1.3, "the slow reader read faster than its pace (test bug)"
    assert stalled and sent_slow < TOTAL / 4, (
        f"the app's sender was not blocked during the slow phase (sent {sent_slow / H.MiB:.0f} MiB)")

    # Backpressure, measured: what the stream has between the two adit processes (in flight minus the kernel
    # queues of the four end sockets, read from /proc/net/tcp at the same moment) is bounded by the window.
    # `in_flight` counts only whole chunks the app's sendall returned from, so it can only be low, by < 256 KiB.
    # A window ignored tenfold (40 MiB) fails by far, and so does one ignored twice.
    assert held_by_adit <= WINDOW + ADIT_SLACK, (
        f"{held_by_adit / H.MiB:.1f} MiB of one stream between client and server with a "
        f"{WINDOW / H.MiB:.0f} MiB window: the window does not bound what is in flight")

    # Backpressure, estimated from the buffers alone (a check that does not trust the /proc/net/tcp split):
    #   app send buffer (2 x APP_SNDBUF, fixed)          256 KiB
    # + adit client's receive buffer of the app's connection: not ours to set; autotuning caps it at
    #   tcp_rmem[2] (6 MiB on a default Debian kernel)
    # + the window, with adit's slack                    4 MiB + 1 MiB
    # + adit server's send buffer towards the target: autotuning caps it at tcp_wmem[2] (4 MiB by default)
    # + target receive buffer (2 x TARGET_RCVBUF, fixed) 256 KiB
    # = 15.5 MiB with the default sysctls (128 MiB was allowed before: a window ignored tenfold passed).
    bound = app_sndbuf + _kernel_max("tcp_rmem") + WINDOW + ADIT_SLACK + _kernel_max("tcp_wmem") + target_rcvbuf
    assert in_flight <= bound, (
        f"{in_flight / H.MiB:.1f} MiB sent but not yet read after {SLOW_SECONDS:.0f}s of a "
        f"{SLOW_RATE / H.MiB:.0f} MiB/s reader, more than the buffers and the window can hold "
        f"({bound / H.MiB:.1f} MiB): no backpressure")

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


SLOW_TOTAL = 64 * H.MiB


@pytest.mark.deadline(90)
def test_slow_stream_does_not_block_other_streams(adit, targets, blob):
    """While one stream is stalled by a slow reader (checked: its sender is blocked and gains no more than the
    reader drains), another stream on the same tunnel carries 8 MiB both ways; then the slow reader speeds up
    and the stalled stream delivers all its bytes, unharmed."""
    release = threading.Event()
    pace = lambda t: None if release.is_set() else 64 * H.KiB
    slow = targets.hash_sink(pace=pace, rcvbuf=TARGET_RCVBUF)
    echo = targets.echo()
    t = adit.tunnel([slow.port, echo.port], server_extra=WINDOW_ARGS, client_extra=WINDOW_ARGS)

    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, APP_SNDBUF)
    s.settimeout(H.scaled(60))
    s.connect(("127.0.0.1", t.ports[0]))
    progress = H.Progress()
    out = {}

    def sender():
        try:
            out["sent"] = H.send_blob(s, blob, SLOW_TOTAL, seed=10, progress=progress)
        except BaseException as e:   # reported below, never swallowed
            out["err"] = e

    th = threading.Thread(target=sender, daemon=True)
    th.start()

    # Wait until the slow stream has stalled: its window is used up (more than the initial window sent but not
    # read) and the sender has not got a chunk further for a second (at 64 KiB/s one 256 KiB chunk drains in 4 s).
    last = {"bytes": -1, "since": time.monotonic()}

    def stalled():
        assert "err" not in out, f"the slow stream's sender failed: {out['err']!r}"
        now, b = time.monotonic(), progress.bytes
        if b != last["bytes"]:
            last.update(bytes=b, since=now)
        return b - slow.bytes_in >= INITIAL_WINDOW and now - last["since"] >= 1.0

    H.wait_until(stalled, timeout=30, what="the slow stream to stall")
    sent_before, read_before = progress.bytes, slow.bytes_in
    held_by_adit = sent_before - read_before - sum(Pipeline(s, t.ports[0], slow.port).outside_adit().values())
    assert held_by_adit <= WINDOW + ADIT_SLACK, (
        f"the stalled stream has {held_by_adit / H.MiB:.1f} MiB between client and server with a "
        f"{WINDOW / H.MiB:.0f} MiB window")

    t1 = time.monotonic()
    with H.connect_local(t.ports[1]) as c:
        c.settimeout(H.scaled(30))
        data = blob.bytes(8 * H.MiB, seed=11)
        got = {}

        def reader():
            try:
                got["d"] = H.recv_until_eof(c)
            except BaseException as e:
                got["err"] = e

        r = threading.Thread(target=reader, daemon=True)
        r.start()
        c.sendall(data)
        c.shutdown(socket.SHUT_WR)
        r.join(H.scaled(30))
        assert not r.is_alive(), "the echo did not finish while the other stream was stalled"
    dt = time.monotonic() - t1
    sent_after, read_after = progress.bytes, slow.bytes_in
    print(f"8 MiB echoed in {dt:.2f}s beside a stalled stream (it sent {(sent_after - sent_before) / H.KiB:.0f} "
          f"KiB meanwhile, its reader read {(read_after - read_before) / H.KiB:.0f} KiB)")
    assert "err" not in got, f"the echo failed: {got['err']!r}"
    assert got.get("d") == data, "the echo came back different"

    # The slow stream stayed stalled the whole time: its sender is still blocked, and it got no further than
    # what the slow reader drained (plus one 256 KiB chunk, the granularity of the sender's count).
    assert th.is_alive() and not progress.done, "the slow stream's sender was not blocked"
    assert sent_after - sent_before <= read_after - read_before + H.CHUNK, (
        f"the slow stream moved {(sent_after - sent_before) / H.KiB:.0f} KiB while its reader read only "
        f"{(read_after - read_before) / H.KiB:.0f} KiB: it was not stalled")

    # Now the reader speeds up: the stalled stream finishes, every byte intact.
    release.set()
    th.join(H.scaled(60))
    assert not th.is_alive(), "the slow stream's sender still blocked after its reader sped up"
    assert "err" not in out, f"the slow stream's sender failed after {progress.bytes} bytes: {out['err']!r}"
    reply = H.read_sink_reply(s)
    s.close()
    assert reply == out["sent"], (f"the slow target got {reply[0]} B sha {reply[1][:12]}, "
                                  f"the app sent {out['sent'][0]} B sha {out['sent'][1][:12]}")
    assert t.client.alive() and t.server.alive()
