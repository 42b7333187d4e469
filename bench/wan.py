#!/usr/bin/env python3
"""WAN suite of the Adit benchmark (`make bench-wan`; docs/benchmarks.md, "Long fat paths").

This kernel has no netem, so the path is Tests/tools/delayline.c: a user-space relay where each direction is a
bottleneck of RATE with RTT/2 of delay, holding at most 1.5 x the bandwidth-delay product before the sender
meets back-pressure. For each profile, in one run and taking turns:
  tcp   one plain TCP connection through the line (the baseline);
  adit  one stream through `adit client -L` -> the line -> `adit server` (an upload: the server's receive
        window is the one that must grow).
Each transfer runs DURATION seconds; the rate is measured at the receiver after the first RAMP seconds (the
window's growth is in the ramp; the total including it is shown too). The median of ROUNDS rounds is reported
with its spread, and adit's ratio to tcp of the same round.

Then MANY concurrent bulk streams (default 1,000) through the first profile's line for a few seconds: the peak
RSS of the adit client and server, against the budget docs/benchmarks.md states.

Environment: ADIT_BIN (default .build/release/adit), WAN_PROFILES ("1000x50,100x200": Mbit/s x ms),
WAN_ROUNDS (3), WAN_DURATION (10), WAN_RAMP (3), WAN_MANY (1000), WAN_MANY_SECS (6), ADIT_SERVER_ARGS,
ADIT_CLIENT_ARGS.
"""

import hashlib
import os
import selectors
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SOURCE = os.path.join(REPO, "Tests", "tools", "delayline.c")
MiB = 1 << 20


def log(*a):
    print("[wan %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def delayline_binary():
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    out = os.path.join(tempfile.gettempdir(), "adit-delayline-" + digest)
    if not os.path.exists(out):
        cc = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
        if not cc:
            sys.exit("wan: no C compiler (cc, clang or gcc) to build Tests/tools/delayline.c")
        tmp = "%s.%d" % (out, os.getpid())
        subprocess.run([cc, "-O2", "-pthread", "-o", tmp, SOURCE], check=True)
        os.replace(tmp, out)
    return out


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("port %d did not open" % port)


def rss_kib(pid):
    """VmRSS in KiB (bench/run.py has its own, with the process-tree bookkeeping around it)."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Sink:
    """Accepts connections and counts what arrives, with a timestamped trace per connection."""

    def __init__(self):
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4096)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.total = 0
        self.traces = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                c, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._read, args=(c,), daemon=True).start()

    def _read(self, c):
        buf = bytearray(1 * MiB)
        trace = []
        with self.lock:
            self.traces.append(trace)
        got = 0
        while True:
            try:
                n = c.recv_into(buf)
            except OSError:
                n = 0
            if n == 0:
                break
            got += n
            trace.append((time.monotonic(), got))
            with self.lock:
                self.total += n
        c.close()

    def stop(self):
        self.listener.close()


def transfer(port, duration):
    """Sends as fast as the path takes for `duration` seconds; returns when the receiver's trace is final."""
    s = socket.create_connection(("127.0.0.1", port))
    chunk = b"\x5a" * MiB   # adit runs with --compression off: the payload's content does not matter
    end = time.monotonic() + duration
    while time.monotonic() < end:
        s.sendall(chunk)
    s.close()


def rate_from_trace(trace, start, ramp, duration):
    """Mbit/s at the receiver between start+ramp and start+duration, and over the whole transfer."""
    def at(t):
        got = 0
        for ts, n in trace:
            if ts > t:
                break
            got = n
        return got
    steady = (at(start + duration) - at(start + ramp)) * 8 / (duration - ramp) / 1e6
    whole = at(start + duration) * 8 / duration / 1e6
    return steady, whole


class Adit:
    def __init__(self, binary, target_port, line_port_for, tmp):
        self.server_port = free_port()
        self.local = free_port()
        self.tmp = tmp
        server_args = shlex.split(os.environ.get("ADIT_SERVER_ARGS", ""))
        client_args = shlex.split(os.environ.get("ADIT_CLIENT_ARGS", ""))
        self.server = subprocess.Popen(
            [binary, "server", "--listen", "127.0.0.1:%d" % self.server_port, "--allow",
             "127.0.0.1:%d" % target_port, "--compression", "off", "--log-level", "warning"] + server_args,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "server.log"), "ab"))
        wait_port(self.server_port)
        self.line = line_port_for(self.server_port)
        self.client = subprocess.Popen(
            [binary, "client", "ws://127.0.0.1:%d" % self.line.port, "-L",
             "127.0.0.1:%d:127.0.0.1:%d" % (self.local, target_port), "--compression", "off",
             "--log-level", "warning"] + client_args,
            stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "client.log"), "ab"))
        wait_port(self.local)
        time.sleep(1.0)   # the tunnel is up and its first round trips measured

    def stop(self):
        for p in (self.client, self.server):
            p.terminate()
        for p in (self.client, self.server):
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.line.stop()


class Line:
    def __init__(self, upstream, rtt_ms, rate_mbit):
        self.proc = subprocess.Popen([delayline_binary(), "0", str(upstream), str(rtt_ms), str(rate_mbit)],
                                     stdout=subprocess.PIPE, text=True)
        words = self.proc.stdout.readline().split()
        self.port = int(words[1])

    def stop(self):
        self.proc.terminate()
        self.proc.wait()


def one_transfer(sink, port, duration, ramp):
    before = len(sink.traces)
    start = time.monotonic()
    transfer(port, duration)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with sink.lock:
            if len(sink.traces) > before and sink.traces[before] and (time.monotonic() - sink.traces[before][-1][0]) > 1.0:
                break
        time.sleep(0.1)
    return rate_from_trace(sink.traces[before], start, ramp, duration)


def spread(values):
    return "%.0f (%.0f-%.0f)" % (statistics.median(values), min(values), max(values))


def profile_run(binary, rate, rtt, rounds, duration, ramp, tmp):
    sink = Sink()
    results = {"tcp": [], "adit": [], "tcp_whole": [], "adit_whole": [], "ratio": []}
    for r in range(rounds):
        order = ("tcp", "adit") if r % 2 == 0 else ("adit", "tcp")
        got = {}
        for path in order:
            if path == "tcp":
                line = Line(sink.port, rtt, rate)
                steady, whole = one_transfer(sink, line.port, duration, ramp)
                line.stop()
            else:
                adit = Adit(binary, sink.port, lambda up: Line(up, rtt, rate), tmp)
                try:
                    steady, whole = one_transfer(sink, adit.local, duration, ramp)
                finally:
                    adit.stop()
            got[path] = steady
            results[path].append(steady)
            results[path + "_whole"].append(whole)
            log("%d Mbit/s x %d ms round %d %s: %.0f Mbit/s after %ds (%.0f over the whole %ds)" % (
                rate, rtt, r + 1, path, steady, ramp, whole, duration))
        results["ratio"].append(got["adit"] / got["tcp"] if got["tcp"] else 0)
    sink.stop()
    return results


def many_streams(binary, rate, rtt, n, secs, tmp):
    """n concurrent bulk uploads through one tunnel over the line; peak RSS of both adit processes."""
    sink = Sink()
    adit = Adit(binary, sink.port, lambda up: Line(up, rtt, rate), tmp)
    peak = {"client": 0, "server": 0}
    stop = threading.Event()

    def sample():
        while not stop.wait(0.1):
            peak["client"] = max(peak["client"], rss_kib(adit.client.pid))
            peak["server"] = max(peak["server"], rss_kib(adit.server.pid))
    base = {"client": rss_kib(adit.client.pid), "server": rss_kib(adit.server.pid)}
    th = threading.Thread(target=sample, daemon=True)
    th.start()
    sel = selectors.DefaultSelector()
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", adit.local))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    chunk = b"\x5a" * (64 << 10)
    sent = 0
    end = time.monotonic() + secs
    while time.monotonic() < end:
        for key, _ in sel.select(timeout=0.1):
            try:
                sent += key.fileobj.send(chunk)
            except BlockingIOError:
                pass
    for s in socks:
        s.close()
    time.sleep(1.0)
    stop.set()
    th.join()
    received = sink.total
    adit.stop()
    sink.stop()
    return base, peak, sent, received


def main():
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))   # a socket per stream, each side
    binary = os.environ.get("ADIT_BIN", os.path.join(REPO, ".build", "release", "adit"))
    if not os.path.exists(binary):
        sys.exit("wan: %s is missing (make build)" % binary)
    profiles = [tuple(int(x) for x in p.split("x")) for p in os.environ.get("WAN_PROFILES", "1000x50,100x200").split(",")]
    rounds = int(os.environ.get("WAN_ROUNDS", "3"))
    duration = float(os.environ.get("WAN_DURATION", "10"))
    ramp = float(os.environ.get("WAN_RAMP", "3"))
    many = int(os.environ.get("WAN_MANY", "1000"))
    many_secs = float(os.environ.get("WAN_MANY_SECS", "6"))
    tmp = tempfile.mkdtemp(prefix="adit-wan-")
    rows = []
    for rate, rtt in profiles:
        r = profile_run(binary, rate, rtt, rounds, duration, ramp, tmp)
        rows.append((rate, rtt, r))
    print()
    print("| path (one stream, %d rounds, median (min-max)) | plain TCP Mbit/s | adit Mbit/s | adit / TCP | "
          "whole %ds incl. ramp: TCP / adit |" % (rounds, duration))
    print("|---|---:|---:|---:|---:|")
    for rate, rtt, r in rows:
        print("| %d Mbit/s x %d ms | %s | %s | %.2f (%.2f-%.2f) | %.0f / %.0f |" % (
            rate, rtt, spread(r["tcp"]), spread(r["adit"]), statistics.median(r["ratio"]), min(r["ratio"]),
            max(r["ratio"]), statistics.median(r["tcp_whole"]), statistics.median(r["adit_whole"])))
    if many:
        rate, rtt = profiles[0]
        base, peak, sent, received = many_streams(binary, rate, rtt, many, many_secs, tmp)
        print()
        print("%d concurrent bulk streams, %d Mbit/s x %d ms, %.0f s: %.0f MiB sent, %.0f MiB arrived; "
              "peak RSS client %.0f MiB (idle %.0f), server %.0f MiB (idle %.0f)" % (
                  many, rate, rtt, many_secs, sent / MiB, received / MiB, peak["client"] / 1024,
                  base["client"] / 1024, peak["server"] / 1024, base["server"] / 1024))
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
