"""The raw WebSocket bridge against a foreign WebSocket stack (Python `websockets`), with permessage-deflate:
every combination of the four RFC 7692 parameters and window bits 9, 10, 12 and 15, both ways round.

Messages are built so that a broken agreement cannot go unnoticed. zlib checks distances only against the
history it keeps between messages, so the tests send the same 4 KiB-periodic message twice with a small one in
between: the second copy refers about 9 KiB back into the first, which breaks an inflater whose window is
smaller than the compressor's (2^9, 2^10, 2^12), and one that resets while the sender kept its context.
"""

import asyncio
import itertools
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

import e2e_helpers as H
from proxies import stop_process

MiB = H.MiB
FIXTURES = Path(__file__).parent / "fixtures"
WINDOWS = [9, 10, 12, 15]


def log_corpus(size: int, seed: int = 1) -> bytes:
    rng = random.Random(seed)
    lines = []
    total = 0
    while total < size:
        line = json.dumps({"ts": 1_700_000_000 + total, "level": rng.choice(["info", "warn", "debug"]),
                           "path": rng.choice(["/api/users", "/api/orders", "/login", "/static/app.js"]),
                           "status": rng.choice([200, 200, 200, 304, 404, 500]), "ms": rng.randint(1, 900),
                           "req": f"{rng.getrandbits(48):012x}"}) + "\n"
        lines.append(line)
        total += len(line)
    return "".join(lines).encode()[:size]


def far_repeats(seed: int) -> bytes:
    """4 KiB of noise repeated: every match is 4096 bytes back, beyond a 2^9 or 2^10 window."""
    block = random.Random(seed).randbytes(4096)
    return block * 8


FRAGMENTED = 7


def messages(big: bool) -> list[bytes]:
    rng = random.Random(7)
    out = [b"", b"x", far_repeats(1), log_corpus(5000), far_repeats(1), log_corpus(1024), rng.randbytes(20_000),
           log_corpus(100_000, 3)]
    if big:
        out += [log_corpus(3 * MiB, 5), rng.randbytes(3 * MiB)]
    return out


# ---------------------------------------------------------------------------------------------------------
# Python websockets as the client, adit's raw bridge (server --raw) in front of an echo target.

CLIENT_COMBOS = list(itertools.product([False, True], [False, True], [None, *WINDOWS], [None, True, *WINDOWS]))


async def exchange(url: str, snct, cnct, smwb, cmwb, big: bool) -> list[str]:
    factory = ClientPerMessageDeflateFactory(server_no_context_takeover=snct, client_no_context_takeover=cnct,
                                             server_max_window_bits=smwb, client_max_window_bits=cmwb)
    problems = []
    async with connect(url, extensions=[factory], compression=None, proxy=None, max_size=None,
                       open_timeout=H.scaled(10), close_timeout=H.scaled(5)) as ws:
        exts = ws.protocol.extensions
        if len(exts) != 1:
            return [f"no permessage-deflate agreed (answer: {ws.response.headers.get('Sec-WebSocket-Extensions')})"]
        e = exts[0]
        expected = dict(remote_no_context_takeover=snct, local_no_context_takeover=cnct,
                        remote_max_window_bits=smwb or 15,
                        local_max_window_bits=cmwb if isinstance(cmwb, int) and cmwb is not True else 15)
        for key, want in expected.items():
            if getattr(e, key) != want:
                problems.append(f"{key}: agreed {getattr(e, key)}, expected {want}")
        for i, message in enumerate(messages(big)):
            if i == FRAGMENTED:   # one message in three fragments, compressed as one
                third = len(message) // 3
                await ws.send([message[:third], message[third:2 * third], message[2 * third:]])
            else:
                await ws.send(message)
            got = bytearray()
            while len(got) < len(message):
                got += await asyncio.wait_for(ws.recv(), H.scaled(10))
            if bytes(got) != message:
                problems.append(f"message {i} ({len(message)} bytes) came back different ({len(got)} bytes)")
    return problems


def _compressed_counts(line: str) -> tuple[int, int]:
    """(messages the bridge compressed, compressed messages it inflated) from its 'raw bridge closed' line."""
    m = re.search(r"sent (\d+) compressed message\(s\).*received (\d+) compressed", line)
    assert m, f"no compression summary in {line!r}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.deadline(120)
def test_websockets_client_through_the_raw_bridge_every_deflate_combination(adit, targets):
    """Every combination is a valid offer that the bridge (--compression auto) must accept, so in every one
    permessage-deflate is agreed with exactly the parameters asked for, and it is used both ways: the bridge
    inflates what the client compressed and compresses its answers (the compressible messages are far above
    its 128-byte minimum) — checked for each connection, from the bridge's own summary when it closes."""
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--raw", f"/echo=127.0.0.1:{echo.port}"])
    url = f"{server.url}/echo"
    summary = "raw bridge closed; compression:"

    async def run_all():
        failures = {}
        for n, (snct, cnct, smwb, cmwb) in enumerate(CLIENT_COMBOS):
            problems = await exchange(url, snct, cnct, smwb, cmwb, big=n % 15 == 0)
            # connections are one after the other: the (n+1)th summary is this one's
            H.wait_until(lambda: len(server.log_lines_matching(summary)) >= n + 1, 10,
                         what=f"the bridge's summary of connection {n + 1}")
            sent, received = _compressed_counts(server.log_lines_matching(summary)[n])
            if sent == 0:
                problems.append("the bridge compressed none of its answers")
            if received == 0:
                problems.append("the bridge inflated nothing (the client's messages were not compressed)")
            if problems:
                failures[(snct, cnct, smwb, cmwb)] = problems
        return failures

    failures = asyncio.run(run_all())
    assert not failures, f"{len(failures)} of {len(CLIENT_COMBOS)} combinations failed: {failures}"
    assert len(server.log_lines_matching(summary)) == len(CLIENT_COMBOS)


@pytest.mark.deadline(30)
def test_websockets_client_without_deflate_and_with_a_text_message(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--raw", f"/echo=127.0.0.1:{echo.port}"])

    async def run():
        async with connect(f"{server.url}/echo", compression=None, proxy=None, subprotocols=["binary"]) as ws:
            assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
            assert ws.subprotocol == "binary"
            await ws.send("text goes through as bytes")
            assert await asyncio.wait_for(ws.recv(), H.scaled(10)) == b"text goes through as bytes"

    asyncio.run(run())


# ---------------------------------------------------------------------------------------------------------
# Python websockets as the server (echo), adit's raw client (client --raw) in front of it.

SERVER_COMBOS = list(itertools.product([False, True], [False, True], [None, *WINDOWS], [None, *WINDOWS]))


class EchoServers:
    def __init__(self, configs: list[dict], log_path: Path):
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen([sys.executable, str(FIXTURES / "ws_echo_servers.py"), json.dumps(configs)],
                                     stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise RuntimeError(f"websockets servers did not start (see {log_path})")

    def stop(self):
        stop_process(self.proc)
        self.log.close()


@pytest.fixture
def echo_servers(tmp_path):
    started = []

    def start(configs):
        servers = EchoServers(configs, tmp_path / f"websockets-{len(started)}.log")
        started.append(servers)
        return servers

    yield start
    for s in started:
        s.stop()


def raw_client(adit, port: int, extra: list[str] = ()) -> tuple[H.AditProcess, int]:
    local = H.free_port()
    proc = adit._start("client", ["--raw", f"ws://127.0.0.1:{port}/", "-L", f"127.0.0.1:{local}", *extra])
    H.wait_for_port(local, timeout=10, proc=proc, connect=False)
    return proc, local


def through_raw_client(local: int, payloads: list[bytes]) -> dict:
    """Reads the server's JSON line, then echoes each payload; returns what the server said it negotiated."""
    with H.connect_local(local, timeout=10) as s:
        s.settimeout(H.scaled(15))
        line = bytearray()
        while not line.endswith(b"\n"):
            chunk = s.recv(1)
            assert chunk, "the raw WebSocket closed before the server's first message"
            line += chunk
        info = json.loads(line)
        for payload in payloads:
            s.sendall(payload)
            got = H.recv_exactly(s, len(payload))
            assert H.sha256_hex(got) == H.sha256_hex(payload), f"{len(payload)}-byte payload came back different"
    return info


@pytest.mark.deadline(150)
def test_adit_raw_client_against_websockets_servers_every_deflate_combination(adit, echo_servers):
    configs = [dict(port=H.free_port(), snct=a, cnct=b, smwb=c, cmwb=d) for a, b, c, d in SERVER_COMBOS]
    echo_servers(configs)
    rng = random.Random(11)
    failures = {}
    for n, c in enumerate(configs):
        proc, local = raw_client(adit, c["port"])
        payloads = [far_repeats(n), log_corpus(5000, n), far_repeats(n), rng.randbytes(64 << 10),
                    log_corpus(100_000, n)]
        if n % 20 == 0:
            payloads.append(log_corpus(3 * MiB, n))
        try:
            info = through_raw_client(local, payloads)
            want = dict(remote_no_context_takeover=c["cnct"], local_no_context_takeover=c["snct"],
                        remote_max_window_bits=c["cmwb"] or 15, local_max_window_bits=c["smwb"] or 15)
            wrong = {k: (info.get(k), v) for k, v in want.items() if info.get(k) != v}
            if wrong:
                failures[str(c)] = f"agreed (got, expected): {wrong}; answer {info.get('extensions')}"
        except (AssertionError, OSError, ValueError) as e:
            failures[str(c)] = f"{type(e).__name__}: {e}; client log: {proc.log_tail(5)}"
        proc.stop()
    assert not failures, f"{len(failures)} of {len(configs)} combinations failed: {failures}"


@pytest.mark.deadline(60)
def test_adit_raw_client_offers_follow_its_options(adit, echo_servers):
    """The client's own offer (--window-bits, --no-context-takeover, --compression) against the library's
    defaults and against a server without permessage-deflate."""
    default = dict(port=H.free_port(), library_default=True)
    plain = dict(port=H.free_port(), deflate=False)
    echo_servers([default, plain])
    payloads = [far_repeats(3), log_corpus(5000, 2), far_repeats(3), log_corpus(200_000, 2)]
    cases = [
        ([], default, dict(local_max_window_bits=12, remote_max_window_bits=12)),
        (["--window-bits", "10"], default, dict(local_max_window_bits=10, remote_max_window_bits=10)),
        (["--no-context-takeover"], default, dict(local_no_context_takeover=True, remote_no_context_takeover=True)),
        (["--compression", "always", "--compression-level", "1"], default, dict(remote_max_window_bits=12)),
        (["--compression", "off"], default, dict(extensions=None)),
        ([], plain, dict(extensions=None)),
    ]
    for extra, server, want in cases:
        proc, local = raw_client(adit, server["port"], extra)
        info = through_raw_client(local, payloads)
        for key, value in want.items():
            assert info.get(key) == value, f"{extra} against {server}: {key} = {info.get(key)}, expected {value}; {info}"
        proc.stop()


@pytest.mark.deadline(30)
def test_a_window_of_2_to_the_8_is_honoured_with_huffman_only_compression(adit, targets):
    """zlib cannot compress with a 256-byte window; asked for one, the bridge compresses without
    back-references, which the client's 2^8 inflater takes."""
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"],
                         extra=["--raw", f"/echo=127.0.0.1:{echo.port}", "--compression", "always"])

    async def run():
        factory = ClientPerMessageDeflateFactory(server_max_window_bits=8)
        async with connect(f"{server.url}/echo", extensions=[factory], compression=None, proxy=None,
                           max_size=None) as ws:
            assert ws.protocol.extensions[0].remote_max_window_bits == 8
            for message in [far_repeats(1), log_corpus(5000), far_repeats(1), log_corpus(300_000, 4)]:
                await ws.send(message)
                got = bytearray()
                while len(got) < len(message):
                    got += await asyncio.wait_for(ws.recv(), H.scaled(10))
                assert bytes(got) == message

    asyncio.run(run())
    server.stop()
    line = server.wait_for_log("raw bridge closed; compression:")
    assert "Huffman only" in server.wait_for_log("raw bridge opened")
    sent = int(line.split("sent ")[1].split(" compressed")[0])
    assert sent >= 4, line
