#!/usr/bin/env python3
"""Instructions per relayed small message, counted by valgrind's callgrind (`make bench-instructions`;
docs/benchmarks.md, "Instructions per message").

Timing on these shared two-core VMs is noisy and hardware counters are not available; callgrind counts the
instructions a process executes, which repeats to a fraction of a percent. One side of an -L tunnel runs under
callgrind (the other natively), and a client does N sequential 64-byte round trips through it to an echo
target. Each round trip crosses every hop twice (request and reply), so a hop's cost per message is

    (instructions with N2 round trips - instructions with N1) / (2 x (N2 - N1))

which cancels start-up, the handshake and shutdown. Reported for the client hop and the server hop.

With CG_MODE=connect each round is a whole stream instead: connect through the forward, 64 bytes there and
back, close (and wait for the tunnel to report it closed). A hop's cost per stream is then

    (instructions with N2 streams - instructions with N1) / (N2 - N1)

Environment: ADIT_BIN (default .build/release/adit), CG_MODE (messages, or connect), CG_N1 (300; connect: 100),
CG_N2 (2300; connect: 600), CG_SIZE (64), CG_LOG_LEVEL (error), CG_KEEP=1 keeps
the callgrind outputs (then `callgrind_annotate --inclusive=yes FILE` shows where the instructions go).
"""

import glob
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.dont_write_bytecode = True   # keep bench/ free of __pycache__
sys.path.insert(0, HERE)
from wan import free_port, wait_port   # noqa: E402


def echo_server():
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(("127.0.0.1", 0))
    ls.listen(16)

    def serve(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(65536)
            if not d:
                break
            c.sendall(d)
        c.close()

    def accept():
        while True:
            c, _ = ls.accept()
            threading.Thread(target=serve, args=(c,), daemon=True).start()
    threading.Thread(target=accept, daemon=True).start()
    return ls.getsockname()[1]


def round_trip(s, msg):
    s.sendall(msg)
    got = 0
    while got < len(msg):
        d = s.recv(len(msg) - got)
        if not d:
            raise RuntimeError("the tunnel closed")
        got += len(d)


def count(binary, measured, rounds, size, echo_port, tmp, mode="messages"):
    """Total instructions of the `measured` side ("client" or "server") for `rounds` round trips."""
    sport, lport = free_port(), free_port()
    out = os.path.join(tmp, "cg.%s.%d.out" % (measured, rounds))
    grind = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, "--dump-instr=no"]
    server_cmd = [binary, "server", "--listen", "127.0.0.1:%d" % sport, "--allow", "127.0.0.1:%d" % echo_port,
                  "--log-level", os.environ.get("CG_LOG_LEVEL", "error")]
    client_cmd = [binary, "client", "ws://127.0.0.1:%d" % sport, "-L", "127.0.0.1:%d:127.0.0.1:%d" % (lport, echo_port),
                  "--log-level", os.environ.get("CG_LOG_LEVEL", "error")]
    log = open(os.path.join(tmp, "valgrind.log"), "ab")
    server = subprocess.Popen((grind if measured == "server" else []) + server_cmd, stdout=log, stderr=log)
    wait_port(sport, timeout=60)
    client = subprocess.Popen((grind if measured == "client" else []) + client_cmd, stdout=log, stderr=log)
    wait_port(lport, timeout=60)
    time.sleep(2.0)
    msg = b"p" * size
    if mode == "connect":
        for _ in range(rounds):
            s = socket.create_connection(("127.0.0.1", lport))
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            round_trip(s, msg)
            s.shutdown(socket.SHUT_WR)
            if s.recv(1):   # the tunnel passes our EOF on and the target's back: the stream is done end to end
                raise RuntimeError("unexpected data after the echo")
            s.close()
    else:
        s = socket.create_connection(("127.0.0.1", lport))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(rounds):
            round_trip(s, msg)
        s.close()
    time.sleep(1.0)
    for p in (client, server):
        p.terminate()
    for p in (client, server):
        p.wait(120)
    with open(out) as f:
        text = f.read()
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    return int(m.group(1))


def main():
    binary = os.environ.get("ADIT_BIN", os.path.join(REPO, ".build", "release", "adit"))
    mode = os.environ.get("CG_MODE", "messages")
    if mode not in ("messages", "connect"):
        sys.exit("CG_MODE must be messages or connect, not %r" % mode)
    n1 = int(os.environ.get("CG_N1", "100" if mode == "connect" else "300"))
    n2 = int(os.environ.get("CG_N2", "600" if mode == "connect" else "2300"))
    size = int(os.environ.get("CG_SIZE", "64"))
    tmp = tempfile.mkdtemp(prefix="adit-callgrind-")
    # valgrind 3.19 (Debian 12) cannot read the DWARF 5 debug info of a Swift binary and gives up; a copy
    # without it keeps the symbol table, which is all the counts need.
    stripped = os.path.join(tmp, "adit")
    subprocess.run(["objcopy", "--strip-debug", binary, stripped], check=True)
    binary = stripped
    echo_port = echo_server()
    for side in ("client", "server"):
        a = count(binary, side, n1, size, echo_port, tmp, mode)
        b = count(binary, side, n2, size, echo_port, tmp, mode)
        if mode == "connect":
            print("%s hop: %.0f instructions per stream (connect, %d bytes there and back, close; %d and %d "
                  "streams: %d and %d)" % (side, (b - a) / (n2 - n1), size, n1, n2, a, b), flush=True)
        else:
            per = (b - a) / (2 * (n2 - n1))
            print("%s hop: %.0f instructions per relayed %d-byte message (%d and %d round trips: %d and %d)" % (
                side, per, size, n1, n2, a, b), flush=True)
    if os.environ.get("CG_KEEP"):
        print("callgrind outputs kept in %s (callgrind_annotate FILE)" % tmp)
        return
    for f in glob.glob(os.path.join(tmp, "*")):
        os.remove(f)
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
