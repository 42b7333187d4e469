"""3. 200 concurrent streams of mixed sizes over one WebSocket, each verified by hash."""

import hashlib
import socket
import threading
import time

import pytest

import e2e_helpers as H

N_STREAMS = 200
SIZES = [0, 1, 1 * H.KiB, 64 * H.KiB, 1 * H.MiB, 8 * H.MiB]


def _established(port: int) -> int:
    """Connections in ESTABLISHED state whose local port is `port` (the server's side of its tunnels).

    Counted as distinct (local, remote) address pairs: /proc/net/tcp is read a page at a time and, while
    hundreds of connections open and close, the kernel can print the same socket on two pages."""
    seen = set()
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        seen.add((fields[1], fields[2]))
        except FileNotFoundError:
            continue
    return len(seen)


def _echo_stream(port, blob, size, seed, barrier):
    with H.connect_local(port, timeout=30) as s:
        s.settimeout(H.scaled(90))
        barrier.wait(timeout=H.scaled(60))  # all 200 streams are open before any data flows
        out = {}

        def sender():
            try:
                out["sent"] = H.send_blob(s, blob, size, seed=seed)
            except BaseException as e:
                out["err"] = e

        th = threading.Thread(target=sender, daemon=True)
        th.start()
        got = H.recv_all_hash(s)
        th.join(H.scaled(90))
        if "err" in out:
            raise out["err"]
        return out["sent"], got


def _sink_stream(port, blob, size, seed, barrier):
    with H.connect_local(port, timeout=30) as s:
        s.settimeout(H.scaled(90))
        barrier.wait(timeout=H.scaled(60))
        sent = H.send_blob(s, blob, size, seed=seed)
        got = H.read_sink_reply(s)
        return sent, got


@pytest.mark.deadline(240)
def test_200_concurrent_streams_mixed_sizes(adit, targets, blob):
    echo = targets.echo()
    sink = targets.hash_sink()
    t = adit.tunnel([echo.port, sink.port])
    echo_port, sink_port = t.ports

    barrier = threading.Barrier(N_STREAMS)
    results: dict[int, object] = {}
    plan = []
    for i in range(N_STREAMS):
        size = SIZES[i % len(SIZES)]
        kind = "echo" if (i // len(SIZES)) % 2 == 0 else "sink"
        plan.append((i, kind, size))

    def worker(i, kind, size):
        try:
            fn = _echo_stream if kind == "echo" else _sink_stream
            results[i] = fn(echo_port if kind == "echo" else sink_port, blob, size, 100 + i, barrier)
        except BaseException as e:
            results[i] = e

    # "over one WebSocket": sample the connections to the server's listen port while the streams run
    tunnel_conns: list[int] = []
    sampling = threading.Event()

    def sample():
        while not sampling.wait(0.1):
            tunnel_conns.append(_established(t.server.port))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=p, daemon=True) for p in plan]
    for th in threads:
        th.start()
    H.join_all(threads, timeout=200)
    elapsed = time.monotonic() - t0
    sampling.set()
    sampler.join()
    total = sum(size * (2 if kind == "echo" else 1) for _, kind, size in plan)
    print(f"{N_STREAMS} streams, {total / H.MiB:.0f} MiB through the tunnel in {elapsed:.1f}s")

    failures = []
    for i, kind, size in plan:
        r = results.get(i)
        if r is None:
            failures.append(f"stream {i} ({kind}, {size} B): did not finish")
        elif isinstance(r, BaseException):
            failures.append(f"stream {i} ({kind}, {size} B): {type(r).__name__}: {r}")
        else:
            sent, got = r
            expect = (size, hashlib.sha256(blob.bytes(size, 100 + i)).hexdigest())
            if sent != expect:
                failures.append(f"stream {i}: test bug, sent {sent} expected {expect}")
            elif got != sent:
                failures.append(f"stream {i} ({kind}, {size} B): sent {sent[0]} B sha {sent[1][:12]}, "
                                f"got {got[0]} B sha {got[1][:12]}")
    assert not failures, f"{len(failures)} of {N_STREAMS} streams failed:\n" + "\n".join(failures[:30])

    n_echo = sum(1 for p in plan if p[1] == "echo")
    n_sink = N_STREAMS - n_echo
    echo.wait_results(n_echo, timeout=10)
    sink.wait_results(n_sink, timeout=10)
    assert echo.accepted == n_echo and sink.accepted == n_sink
    assert not echo.errors and not sink.errors
    assert t.client.alive() and t.server.alive()

    # All of it went over one WebSocket: the server opened exactly one tunnel, and never had more than one
    # connection on its listen port while the streams ran.
    opened = t.server.log_lines_matching("tunnel opened")
    assert len(opened) == 1, f"the server opened {len(opened)} tunnels, not one: {opened}"
    assert tunnel_conns and max(tunnel_conns) == 1 and _established(t.server.port) == 1, (
        f"connections to the server's port during the run: {sorted(set(tunnel_conns))}, now "
        f"{_established(t.server.port)}; expected exactly one")
