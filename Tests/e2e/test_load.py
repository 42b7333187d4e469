"""Load (issue 11): 10,000 concurrent streams in one tunnel and 500 tunnel sessions to one server, every byte
checked, a probe stream's latency reported, and the processes' memory and descriptors within bounds and given
back afterwards. The soft descriptor limit is raised to the hard one, as an operator would; the echo target runs
in a process of its own, so that 10,000 sockets on each side fit under a hard limit of 20,000 (these machines')."""

from __future__ import annotations

import asyncio
import os
import random
import resource
import statistics
import sys
import time

import pytest

import e2e_helpers as H

STREAMS = 10_000
SESSIONS = 500
ECHO_SERVER = r"""
import asyncio, sys

async def echo(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(echo, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def many_descriptors():
    """Raises this process's soft descriptor limit to the hard one (children inherit it), and puts it back."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    hard = before[1] if before[1] != resource.RLIM_INFINITY else 1 << 20
    if hard < STREAMS + 2000:
        pytest.fail(f"the hard descriptor limit ({hard}) is below what {STREAMS} streams need")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.mark.deadline(420)
def test_ten_thousand_concurrent_streams_in_one_tunnel(adit, many_descriptors):
    echo_port = H.free_port()
    echo = H.AditProcess("echo", [sys.executable, "-c", ECHO_SERVER, str(echo_port)], adit.tmp / "echo.log")
    adit.procs.append(echo)
    echo.start()
    H.wait_for_port(echo_port, timeout=10, proc=echo, connect=False)

    async def run() -> None:
        server = adit.server([f"127.0.0.1:{echo_port}"])
        local = H.free_port()
        client = adit.client(server.url, [(local, "127.0.0.1", echo_port)])
        await asyncio.to_thread(H.wait_tunnel_ready, local, 15, client)
        base = {p.name: (p.rss_kib(), fds(p.pid)) for p in (server, client)}

        async def open_one(k: int):
            data = random.Random(k).randbytes(512)
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            writer.write(data)
            back = await asyncio.wait_for(reader.readexactly(len(data)), H.scaled(60))
            assert back == data, f"stream {k}: the echo differs"
            return reader, writer

        t0 = time.monotonic()
        held = []
        for start in range(0, STREAMS, 250):
            held += await asyncio.gather(*(open_one(k) for k in range(start, min(start + 250, STREAMS))))
        opened_in = time.monotonic() - t0
        # All 10,000 are open at once: each holds a socket on the client and a target socket on the server.
        loaded = {p.name: (p.rss_kib(), fds(p.pid)) for p in (server, client)}
        for name, (rss, n) in loaded.items():
            assert n >= STREAMS, f"{name} holds {n} descriptors: the streams are not all open at once"
            per_stream = (rss - base[name][0]) * 1024 / STREAMS
            print(f"{name}: +{(rss - base[name][0]) / 1024:.1f} MiB for {STREAMS} open streams "
                  f"({per_stream / 1024:.1f} KiB each), {n} descriptors")
            assert per_stream < 48 * 1024, f"{name} takes {per_stream / 1024:.1f} KiB per open stream"
        # A probe beside them: 64-byte round trips.
        reader, writer = await asyncio.open_connection("127.0.0.1", local)
        rtts = []
        for i in range(50):
            msg = i.to_bytes(2, "big") * 32
            t = time.perf_counter()
            writer.write(msg)
            assert await asyncio.wait_for(reader.readexactly(64), H.scaled(10)) == msg
            rtts.append((time.perf_counter() - t) * 1e6)
        writer.close()
        print(f"opened and echoed {STREAMS} streams in {opened_in:.1f} s; probe round trip beside them: "
              f"p50 {statistics.median(rtts):.0f} µs, max {max(rtts):.0f} µs")
        # Every stream still works after the others were opened, then all end cleanly.
        for k, (r, w) in enumerate(held[::100]):
            w.write(b"again")
            assert await asyncio.wait_for(r.readexactly(5), H.scaled(10)) == b"again", k
        for _, w in held:
            w.close()
        await asyncio.gather(*(w.wait_closed() for _, w in held), return_exceptions=True)
        for p in (server, client):
            await asyncio.to_thread(H.wait_until, lambda p=p: fds(p.pid) <= base[p.name][1] + 20, 60,
                                    0.2, f"{p.name}'s descriptors to come back")
        assert server.alive() and client.alive() and echo.alive()

    asyncio.run(run())


@pytest.mark.deadline(300)
def test_five_hundred_sessions_to_one_server(adit, targets):
    from websockets.asyncio.client import connect
    echo = targets.echo()
    admin = H.free_port()
    # All from 127.0.0.1 and anonymous: the per-address and per-user limits (100 by default) raised, as an
    # operator whose clients come through one NAT would.
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--admin", f"127.0.0.1:{admin}",
                                                           "--max-sessions-per-address", "1000",
                                                           "--max-sessions-per-user", "1000"])
    H.wait_for_port(admin, timeout=10, proc=server, connect=False)
    base_fds = fds(server.pid)
    base_rss = server.rss_kib()

    async def session(k: int):
        ws = await connect(server.url + "/", subprotocols=["adit.v1"], compression=None, proxy=None,
                           open_timeout=H.scaled(30), max_size=None)
        data = random.Random(k).randbytes(1024)
        await ws.send(H.mux_hello() + H.mux_frame(H.MUX_OPEN, 1, H.mux_ipv4_target("127.0.0.1", echo.port))
                      + H.mux_frame(H.MUX_DATA, 1, data))
        got, opened = b"", False
        while len(got) < len(data):
            msg = await asyncio.wait_for(ws.recv(), H.scaled(30))
            for ftype, _, stream, payload in H.mux_parse(msg):
                if ftype == H.MUX_OPEN_OK and stream == 1:
                    opened = True
                elif ftype == H.MUX_DATA and stream == 1:
                    got += payload
                elif ftype == H.MUX_RESET:
                    raise AssertionError(f"session {k}: stream reset: {payload!r}")
        assert opened and got == data, f"session {k}: the echo differs"
        return ws

    async def run():
        t0 = time.monotonic()
        sessions = []
        for start in range(0, SESSIONS, 50):
            sessions += await asyncio.gather(*(session(k) for k in range(start, min(start + 50, SESSIONS))))
        took = time.monotonic() - t0
        status = await asyncio.to_thread(lambda: __import__("json").loads(
            __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{admin}/status.json",
                                                         timeout=H.scaled(30)).read()))
        assert len(status["sessions"]) == SESSIONS, len(status["sessions"])
        assert all(s["streams"] == 1 and s["bytesSent"] >= 1024 for s in status["sessions"])
        rss = server.rss_kib()
        print(f"{SESSIONS} sessions up and echoed in {took:.1f} s; server +{(rss - base_rss) / 1024:.1f} MiB "
              f"({(rss - base_rss) / SESSIONS:.0f} KiB each), {fds(server.pid)} descriptors")
        assert (rss - base_rss) / SESSIONS < 512, "more than 512 KiB per idle session"
        await asyncio.gather(*(ws.close() for ws in sessions), return_exceptions=True)

    asyncio.run(run())
    H.wait_until(lambda: fds(server.pid) <= base_fds + 20, 60, 0.2, "the server's descriptors to come back")
    assert server.alive()
