#!/usr/bin/env python3
"""Small load tools for the Adit benchmark (stdlib only, Linux only).

Subcommands:
  echo      epoll TCP echo server on 127.0.0.1 (single thread, TCP_NODELAY);
            prints its port on stdout when listening. Also used as the
            "hold" server for idle streams.
  connect   N sequential connections: connect, send 1 byte, read 1 byte
            echo, close. Prints a JSON summary of per-connection times.
            With --socks HOST:PORT the port is a SOCKS5 proxy: greeting (no
            auth), CONNECT to HOST:PORT, then the byte, each step waiting for
            its answer as curl does; the time covers all of it.
  pingpong  one connection, SIZE-byte request/echo round trips. JSON summary.
  udpecho   UDP echo server on 127.0.0.1 (one thread, blocking recvfrom/sendto);
            prints its port on stdout when bound
  udpping   one UDP socket, SIZE-byte datagram request/echo round trips, one
            outstanding at a time; a reply not back within --op-timeout
            counts as lost (late replies are recognised by their sequence
            number and skipped). JSON summary.
  hold      opens/holds many idle connections; driven by stdin lines:
              open N   -> grow to N established connections, each verified
                          by one 1-byte echo; prints a JSON line
              verify   -> one more 1-byte echo on every held connection
              close    -> close all, print a JSON line, exit
  sink      TCP sink (a thread per connection): reads until EOF, then
            answers with one ASCII line, "BYTES CPU_SECS", and closes;
            prints its port on stdout when listening
  blast     one connection: sends a file (cycling through it) with
            sendfile(2) until --bytes are sent or --time-limit is up, shuts
            down its write side and waits for the sink's count. JSON summary
            (seconds from connected to count received).
  corpus    writes the seeded JSON-log corpus (see json_log_corpus)
Every loop is bounded by a count and by a deadline.
"""

import argparse
import bisect
import errno
import json
import math
import os
import random
import select
import socket
import sys
import threading
import time

HOST = "127.0.0.1"


def summarize(samples_ns, extra=None):
    s = sorted(samples_ns)
    n = len(s)
    out = {"n": n}
    if n:
        def pct(q):
            return s[min(n - 1, max(0, math.ceil(q * n) - 1))] / 1000.0
        out.update({
            "min_us": s[0] / 1000.0,
            "p50_us": pct(0.50),
            "p90_us": pct(0.90),
            "p99_us": pct(0.99),
            "p999_us": pct(0.999),
            "max_us": s[-1] / 1000.0,
            "mean_us": sum(s) / n / 1000.0,
        })
    if extra:
        out.update(extra)
    return out


# --------------------------------------------------------------------------
# echo server


def cmd_echo(args):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((HOST, args.port))
    ls.listen(args.backlog)
    ls.setblocking(False)
    lfd = ls.fileno()
    ep = select.epoll()
    ep.register(lfd, select.EPOLLIN)
    conns = {}      # fd -> socket
    pending = {}    # fd -> bytes not yet written
    IN = select.EPOLLIN
    OUT = select.EPOLLOUT
    print(ls.getsockname()[1], flush=True)
    sys.stdout.close()

    def drop(fd):
        s = conns.pop(fd, None)
        pending.pop(fd, None)
        if s is not None:
            try:
                ep.unregister(fd)
            except OSError:
                pass
            s.close()

    while True:
        for fd, ev in ep.poll():
            if fd == lfd:
                for _ in range(1024):
                    try:
                        c, _a = ls.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError as e:
                        if e.errno in (errno.EMFILE, errno.ENFILE):
                            print("echo: out of fds", file=sys.stderr)
                            break
                        continue
                    c.setblocking(False)
                    c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    conns[c.fileno()] = c
                    ep.register(c.fileno(), IN)
                continue
            s = conns.get(fd)
            if s is None:
                continue
            if fd in pending:
                if ev & (OUT | select.EPOLLERR | select.EPOLLHUP):
                    buf = pending[fd]
                    try:
                        k = s.send(buf)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        drop(fd)
                        continue
                    if k < len(buf):
                        pending[fd] = buf[k:]
                    else:
                        del pending[fd]
                        ep.modify(fd, IN)
                continue
            try:
                data = s.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError:
                drop(fd)
                continue
            if not data:
                drop(fd)
                continue
            try:
                k = s.send(data)
            except (BlockingIOError, InterruptedError):
                k = 0
            except OSError:
                drop(fd)
                continue
            if k < len(data):
                pending[fd] = data[k:]
                ep.modify(fd, OUT)


# --------------------------------------------------------------------------
# connect + first byte


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        if not d:
            raise OSError("connection closed after %d of %d bytes" % (len(buf), n))
        buf += d
    return buf


def socks5_connect(s, host, port):
    """SOCKS5 as curl does it: greeting (no auth), wait for the method, CONNECT
    (IPv4 address), wait for the reply and skip its bound address."""
    s.sendall(b"\x05\x01\x00")
    if recv_exact(s, 2) != b"\x05\x00":
        raise OSError("SOCKS5: no acceptable method")
    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    ver, rep, _rsv, atyp = recv_exact(s, 4)
    if ver != 5 or rep != 0:
        raise OSError("SOCKS5 reply %d" % rep)
    if atyp == 1:
        recv_exact(s, 4 + 2)
    elif atyp == 4:
        recv_exact(s, 16 + 2)
    elif atyp == 3:
        recv_exact(s, recv_exact(s, 1)[0] + 2)
    else:
        raise OSError("SOCKS5 reply address type %d" % atyp)


def cmd_connect(args):
    deadline = time.monotonic() + args.time_limit
    samples = []
    errors = 0
    first_error = None
    perf = time.perf_counter_ns
    addr = (HOST, args.port)
    socks = None
    if args.socks:
        h, _, p = args.socks.rpartition(":")
        socks = (h, int(p))
    for _ in range(args.warmup + args.count):
        if time.monotonic() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(args.op_timeout)
        try:
            t0 = perf()
            s.connect(addr)
            if socks:
                socks5_connect(s, *socks)
            s.sendall(b"x")
            b = s.recv(1)
            t1 = perf()
            if b != b"x":
                raise OSError("bad echo %r" % (b,))
            if args.warmup:
                args.warmup -= 1
            else:
                samples.append(t1 - t0)
        except OSError as e:
            errors += 1
            first_error = first_error or repr(e)
        finally:
            s.close()
    extra = {"requested": args.count, "errors": errors, "first_error": first_error,
             "timed_out": len(samples) < args.count}
    if args.raw:
        extra["samples_ns"] = samples
    print(json.dumps(summarize(samples, extra)))


# --------------------------------------------------------------------------
# ping-pong


def cmd_pingpong(args):
    perf = time.perf_counter_ns
    s = socket.create_connection((HOST, args.port), timeout=args.op_timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    msg = bytes((i * 7) & 0xFF for i in range(args.size))
    buf = bytearray(args.size)
    view = memoryview(buf)
    size = args.size
    samples = []
    errors = 0
    first_error = None
    start = time.monotonic()
    deadline = start + args.time_limit
    # warm-up is bounded by count and by time (slow paths get a short one)
    warm_deadline = start + min(2.0, 0.2 * args.time_limit)
    warmup = args.warmup
    total = warmup + args.count
    i = 0
    try:
        while i < total:
            if i < warmup and time.monotonic() > warm_deadline:
                warmup = i
                total = warmup + args.count
            if (i & 63) == 0 and time.monotonic() > deadline:
                break
            t0 = perf()
            s.sendall(msg)
            got = 0
            while got < size:
                k = s.recv_into(view[got:], size - got)
                if k == 0:
                    raise OSError("connection closed by peer")
                got += k
            t1 = perf()
            if i >= warmup:
                samples.append(t1 - t0)
            i += 1
        if bytes(buf) != msg:
            raise OSError("echo mismatch")
    except OSError as e:
        errors += 1
        first_error = repr(e)
    finally:
        s.close()
    extra = {"requested": args.count, "warmup": warmup, "size": size, "errors": errors,
             "first_error": first_error, "timed_out": len(samples) < args.count}
    if args.raw:
        extra["samples_ns"] = samples
    print(json.dumps(summarize(samples, extra)))


# --------------------------------------------------------------------------
# UDP echo and request/response


def cmd_udpecho(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind((HOST, args.port))
    print(s.getsockname()[1], flush=True)
    sys.stdout.close()
    buf = bytearray(65536)
    while True:
        k, peer = s.recvfrom_into(buf)
        try:
            s.sendto(memoryview(buf)[:k], peer)
        except OSError:
            pass


def cmd_udpping(args):
    """Sequence number (8 bytes) + padding to SIZE; one request outstanding."""
    perf = time.perf_counter_ns
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((HOST, args.port))
    s.settimeout(args.op_timeout)
    size = max(8, args.size)
    pad = bytes((i * 7) & 0xFF for i in range(size - 8))
    buf = bytearray(65536)
    samples = []
    lost = 0
    errors = 0
    first_error = None
    start = time.monotonic()
    deadline = start + args.time_limit
    warm_deadline = start + min(2.0, 0.2 * args.time_limit)
    warmup = args.warmup
    total = warmup + args.count
    i = 0
    while i < total:
        now = time.monotonic()
        if i < warmup and now > warm_deadline:
            warmup = i
            total = warmup + args.count
        if now > deadline:
            break
        seq = i.to_bytes(8, "big")
        msg = seq + pad
        t0 = perf()
        try:
            s.send(msg)
            while True:
                k = s.recv_into(buf)
                if buf[:8] == seq:
                    break   # anything else: a late reply to an earlier request
            t1 = perf()
            if bytes(buf[:k]) != msg:
                raise OSError("echo mismatch")
            if i >= warmup:
                samples.append(t1 - t0)
        except socket.timeout:
            if i >= warmup:
                lost += 1
            if lost > max(10, args.count // 10):
                first_error = first_error or "more than 10%% of %d replies lost" % args.count
                errors += 1
                break
        except OSError as e:
            errors += 1
            first_error = first_error or repr(e)
            if errors > 10:
                break
        i += 1
    s.close()
    extra = {"requested": args.count, "warmup": warmup, "size": size, "lost": lost,
             "errors": errors, "first_error": first_error,
             "timed_out": len(samples) + lost < args.count}
    if args.raw:
        extra["samples_ns"] = samples
    print(json.dumps(summarize(samples, extra)))


# --------------------------------------------------------------------------
# idle-stream holder


class Holder:
    def __init__(self, port, concurrency, step_timeout):
        self.addr = (HOST, port)
        self.conc = concurrency
        self.step_timeout = step_timeout
        self.held = []
        self.ep = select.epoll()

    def _run(self, to_open, to_verify):
        """Open `to_open` new connections and/or echo once on each socket
        in `to_verify`. Returns (ok_sockets, failures, first_error)."""
        ep = self.ep
        inflight = {}   # fd -> [sock, state]  state 0=connecting 1=awaiting echo
        ok = []
        failed = 0
        first_error = None
        opened = 0
        vi = 0
        deadline = time.monotonic() + self.step_timeout

        def fail(fd, why):
            nonlocal failed, first_error
            s, _ = inflight.pop(fd)
            try:
                ep.unregister(fd)
            except OSError:
                pass
            s.close()
            failed += 1
            first_error = first_error or why

        while True:
            while len(inflight) < self.conc and (opened < to_open or vi < len(to_verify)):
                if vi < len(to_verify):
                    s = to_verify[vi]
                    vi += 1
                    try:
                        s.send(b"v")
                    except OSError as e:
                        s.close()
                        failed += 1
                        first_error = first_error or repr(e)
                        continue
                    inflight[s.fileno()] = [s, 1]
                    ep.register(s.fileno(), select.EPOLLIN)
                else:
                    opened += 1
                    try:
                        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    except OSError as e:
                        failed += 1
                        first_error = first_error or repr(e)
                        continue
                    s.setblocking(False)
                    rc = s.connect_ex(self.addr)
                    if rc not in (0, errno.EINPROGRESS):
                        s.close()
                        failed += 1
                        first_error = first_error or os.strerror(rc)
                        continue
                    inflight[s.fileno()] = [s, 0]
                    ep.register(s.fileno(), select.EPOLLOUT)
            if not inflight:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                for fd in list(inflight):
                    fail(fd, "timeout")
                break
            for fd, ev in ep.poll(min(left, 0.5)):
                ent = inflight.get(fd)
                if ent is None:
                    continue
                s, st = ent
                if st == 0:
                    err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if err:
                        fail(fd, os.strerror(err))
                        continue
                    try:
                        s.send(b"h")
                    except OSError as e:
                        fail(fd, repr(e))
                        continue
                    ent[1] = 1
                    ep.modify(fd, select.EPOLLIN)
                else:
                    try:
                        d = s.recv(16)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError as e:
                        fail(fd, repr(e))
                        continue
                    if len(d) != 1:
                        fail(fd, "closed" if not d else "unexpected data")
                        continue
                    ep.unregister(fd)
                    del inflight[fd]
                    ok.append(s)
        return ok, failed, first_error

    def open(self, n):
        t0 = time.monotonic()
        want = max(0, n - len(self.held))
        ok, failed, err = self._run(want, [])
        self.held.extend(ok)
        return {"cmd": "open", "held": len(self.held), "opened": len(ok),
                "failed": failed, "first_error": err,
                "secs": round(time.monotonic() - t0, 3)}

    def verify(self):
        t0 = time.monotonic()
        ok, failed, err = self._run(0, self.held)
        self.held = ok
        return {"cmd": "verify", "held": len(self.held), "failed": failed,
                "first_error": err, "secs": round(time.monotonic() - t0, 3)}

    def close(self):
        n = len(self.held)
        for s in self.held:
            s.close()
        self.held = []
        return {"cmd": "close", "closed": n}


def cmd_hold(args):
    h = Holder(args.port, args.concurrency, args.step_timeout)
    for _ in range(1000):
        line = sys.stdin.readline()
        if not line:
            break
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "open":
            r = h.open(int(parts[1]))
        elif parts[0] == "verify":
            r = h.verify()
        elif parts[0] == "close":
            print(json.dumps(h.close()), flush=True)
            break
        else:
            r = {"error": "unknown command %r" % parts[0]}
        print(json.dumps(r), flush=True)
    h.close()

# --------------------------------------------------------------------------
# bulk transfer: sink and blast (compression suite)


def cmd_sink(args):
    ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((args.host, args.port))
    ls.listen(64)
    print(ls.getsockname()[1], flush=True)
    sys.stdout.close()

    def serve(c):
        buf = bytearray(1 << 20)
        total = 0
        try:
            c.settimeout(args.idle_timeout)
            cpu0 = time.thread_time()
            while True:
                k = c.recv_into(buf)
                if not k:
                    break
                total += k
            # byte count and this thread's CPU seconds
            c.sendall(b"%d %.6f\n" % (total, time.thread_time() - cpu0))
        except OSError as e:
            print("sink: %r after %d bytes" % (e, total), file=sys.stderr, flush=True)
        finally:
            c.close()

    while True:
        c, _a = ls.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


def cmd_blast(args):
    fd = os.open(args.file, os.O_RDONLY)
    size = os.fstat(fd).st_size
    want = args.bytes if args.bytes > 0 else size
    out = {"requested": want, "file": args.file}
    deadline_connect = time.monotonic() + args.connect_timeout
    s = None
    while True:
        try:
            s = socket.create_connection((args.host, args.port), timeout=5)
            break
        except OSError as e:
            if time.monotonic() > deadline_connect:
                out["error"] = "connect: %r" % (e,)
                print(json.dumps(out))
                return
            time.sleep(0.05)
    s.settimeout(None)   # blocking sendfile(2); the caller bounds the whole run
    t0 = time.perf_counter()
    cpu0 = time.process_time()
    deadline = time.monotonic() + args.time_limit if args.time_limit > 0 else None
    sent = 0
    off = 0
    timed_out = False
    try:
        while sent < want:
            if deadline is not None and time.monotonic() > deadline:
                timed_out = True
                break
            n = min(args.chunk, want - sent, size - off)
            k = os.sendfile(s.fileno(), fd, off, n)
            if k <= 0:
                raise OSError("sendfile returned %d" % k)
            sent += k
            off += k
            if off >= size:
                off = 0
        t_sent = time.perf_counter()
        cpu_send = time.process_time() - cpu0
        s.shutdown(socket.SHUT_WR)
        s.settimeout(args.op_timeout)
        line = b""
        while not line.endswith(b"\n"):
            d = s.recv(64)
            if not d:
                break
            line += d
        t1 = time.perf_counter()
        parts = line.split()
        got = int(parts[0]) if parts else None
        out.update({"bytes": sent, "acked": got, "secs": t1 - t0,
                    "send_secs": t_sent - t0, "time_limited": timed_out,
                    "gbps": sent * 8 / (t1 - t0) / 1e9,
                    "sender_cpu_pct": round(100.0 * cpu_send / max(1e-9, t_sent - t0), 1)})
        if len(parts) > 1:
            out["sink_cpu_pct"] = round(100.0 * float(parts[1]) / (t1 - t0), 1)
        if got != sent:
            out["error"] = "sink counted %s of %d bytes" % (got, sent)
    except OSError as e:
        out.update({"bytes": sent, "error": repr(e)})
    finally:
        s.close()
        os.close(fd)
    print(json.dumps(out))


# --------------------------------------------------------------------------
# JSON-log corpus


_SERVICES = [("api-gateway", 6), ("orders", 3), ("payments", 2), ("inventory", 2),
             ("auth", 3), ("search", 2), ("notifications", 1)]
_ROUTES = [("GET", "/api/v1/users/{id}", 8), ("GET", "/api/v1/users/{id}/orders", 6),
           ("POST", "/api/v1/orders", 4), ("GET", "/api/v1/orders/{id}", 6),
           ("PUT", "/api/v1/orders/{id}/status", 2), ("GET", "/api/v1/products", 5),
           ("GET", "/api/v1/products/{id}", 9), ("GET", "/api/v1/search", 5),
           ("POST", "/api/v1/auth/token", 3), ("POST", "/api/v1/payments", 2),
           ("GET", "/api/v1/inventory/{id}/stock", 3), ("DELETE", "/api/v1/cart/{id}/items/{id2}", 1),
           ("GET", "/healthz", 4), ("GET", "/metrics", 1), ("PATCH", "/api/v2/users/{id}/settings", 1)]
_STATUS = [(200, 70), (201, 6), (204, 4), (304, 5), (400, 3), (401, 2), (403, 1), (404, 5),
           (409, 1), (429, 1), (500, 1), (502, 0.5), (503, 0.5)]
_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{v}.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.{v2} Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:{v}.0) Gecko/20100101 Firefox/{v}.0",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_{v2} like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148",
    "okhttp/4.{v2}.0", "python-requests/2.3{v2}.0", "curl/8.{v2}.0", "Go-http-client/2.0",
    "kube-probe/1.2{v2}", "Prometheus/2.4{v2}.1",
]
_SEARCH = ["laptop", "usb-c cable", "running shoes", "coffee grinder", "desk lamp", "headphones",
           "backpack", "monitor 27", "keyboard", "water bottle", "tent", "phone case"]
_DB_TABLES = ["users", "orders", "order_items", "products", "inventory", "payments", "sessions"]
_ERRORS = ["upstream connect error or disconnect/reset before headers",
           "context deadline exceeded", "connection refused", "duplicate key value violates unique constraint",
           "invalid token: signature mismatch", "payment provider returned 502", "redis: connection pool timeout"]


def _weighted(rng, items):
    vals = [x[:-1] if len(x) > 2 else x[0] for x in items]
    w = [x[-1] for x in items]
    cum, t = [], 0.0
    for x in w:
        t += x
        cum.append(t)
    return lambda: vals[bisect.bisect(cum, rng.random() * t)]


def json_log_corpus(nbytes, seed=20261126):
    """Exactly `nbytes` of structured JSON log lines (the last one cut off),
    deterministic for a seed: request logs,
    database queries, cache and error lines from several services, with
    increasing timestamps, UUID request ids, hex trace ids, client IPs,
    lognormal latencies and a handful of user agents."""
    rng = random.Random(seed)
    svc = _weighted(rng, _SERVICES)
    route = _weighted(rng, _ROUTES)
    status = _weighted(rng, _STATUS)
    hosts = {s: ["%s-%x-%s" % (s, rng.getrandbits(36), "".join(
        rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(5)))
        for _ in range(rng.randint(3, 8))] for s, _ in _SERVICES}
    uas = [u.format(v=rng.randint(110, 124), v2=rng.randint(0, 9)) for u in _UAS for _ in range(3)]
    ips = ["%d.%d.%d.%d" % (rng.choice((10, 172, 192, 203, 198, 100)), rng.randrange(256),
                            rng.randrange(256), rng.randrange(1, 255)) for _ in range(4000)]
    users = [rng.randrange(1000, 2000000) for _ in range(20000)]
    t_us = 1795651200 * 1000000   # 2026-11-26T00:00:00Z
    out = []
    n = 0
    sec_cache = [None, None]
    while n < nbytes:
        t_us += int(rng.expovariate(1 / 900.0))  # ~1100 lines/s
        sec = t_us // 1000000
        if sec_cache[0] != sec:
            sec_cache = [sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))]
        ts = "%s.%06dZ" % (sec_cache[1], t_us % 1000000)
        s = svc()
        host = rng.choice(hosts[s])
        rid = "%08x-%04x-4%03x-%04x-%012x" % (rng.getrandbits(32), rng.getrandbits(16),
                                              rng.getrandbits(12), 0x8000 | rng.getrandbits(14),
                                              rng.getrandbits(48))
        r = rng.random()
        if r < 0.72:
            method, path = route()
            path = path.replace("{id}", str(rng.choice(users))).replace("{id2}", str(rng.randrange(1, 400)))
            if path == "/api/v1/search":
                path += "?q=%s&page=%d" % (rng.choice(_SEARCH).replace(" ", "+"), rng.randint(1, 5))
            st = status()
            lat = rng.lognormvariate(2.6, 0.9) * (4 if st >= 500 else 1)
            lvl = "error" if st >= 500 else ("warn" if st >= 400 or lat > 1000 else "info")
            line = ('{"ts":"%s","level":"%s","service":"%s","host":"%s","msg":"request completed",'
                    '"request_id":"%s","trace_id":"%016x","method":"%s","path":"%s","status":%d,'
                    '"latency_ms":%.3f,"bytes_out":%d,"remote_ip":"%s","user_agent":"%s"}\n') % (
                ts, lvl, s, host, rid, rng.getrandbits(64), method, path, st, lat,
                int(rng.lognormvariate(7, 1.5)) if st != 204 else 0, rng.choice(ips), rng.choice(uas))
        elif r < 0.87:
            table = rng.choice(_DB_TABLES)
            rows = int(rng.expovariate(1 / 20.0))
            line = ('{"ts":"%s","level":"debug","service":"%s","host":"%s","msg":"db query",'
                    '"request_id":"%s","db":"postgres","table":"%s","op":"%s","rows":%d,'
                    '"duration_ms":%.3f,"pool_in_use":%d}\n') % (
                ts, s, host, rid, table, rng.choice(("select", "select", "select", "insert", "update")),
                rows, rng.lognormvariate(0.5, 1.0), rng.randint(1, 32))
        elif r < 0.95:
            line = ('{"ts":"%s","level":"debug","service":"%s","host":"%s","msg":"cache %s",'
                    '"request_id":"%s","key":"%s:%d","ttl_s":%d}\n') % (
                ts, s, host, rng.choice(("hit", "hit", "hit", "miss")), rid,
                rng.choice(("user", "product", "session", "cart")), rng.choice(users),
                rng.choice((60, 300, 900, 3600)))
        else:
            line = ('{"ts":"%s","level":"%s","service":"%s","host":"%s","msg":"%s",'
                    '"request_id":"%s","error":"%s","attempt":%d,"upstream":"%s:%d"}\n') % (
                ts, rng.choice(("warn", "warn", "error")), s, host,
                rng.choice(("retrying upstream call", "upstream call failed", "request failed")),
                rid, rng.choice(_ERRORS), rng.randint(1, 3),
                rng.choice(hosts[rng.choice(_SERVICES)[0]]), rng.choice((8080, 9090, 5432, 6379)))
        out.append(line)
        n += len(line)
    data = "".join(out).encode()
    return data[:nbytes]


def cmd_corpus(args):
    data = json_log_corpus(args.bytes, args.seed)
    with open(args.out, "wb") as f:
        f.write(data)
    print(json.dumps({"bytes": len(data), "out": args.out}))



def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("echo")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--backlog", type=int, default=4096)
    p = sub.add_parser("connect")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--time-limit", type=float, default=30.0)
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--raw", action="store_true", help="include all samples (ns)")
    p.add_argument("--socks", default="", metavar="HOST:PORT",
                   help="the port is a SOCKS5 proxy: CONNECT to HOST:PORT through it")
    p = sub.add_parser("pingpong")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=20.0)
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--raw", action="store_true", help="include all samples (ns)")
    p = sub.add_parser("udpecho")
    p.add_argument("--port", type=int, default=0)
    p = sub.add_parser("udpping")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=20.0)
    p.add_argument("--op-timeout", type=float, default=1.0)
    p.add_argument("--raw", action="store_true", help="include all samples (ns)")
    p = sub.add_parser("hold")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--step-timeout", type=float, default=60.0)
    p = sub.add_parser("sink")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--idle-timeout", type=float, default=60.0)
    p = sub.add_parser("blast")
    p.add_argument("--host", default=HOST)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--file", required=True)
    p.add_argument("--bytes", type=int, default=0, help="default: the file once")
    p.add_argument("--time-limit", type=float, default=0, help="stop sending after SECS (0: never)")
    p.add_argument("--chunk", type=int, default=4 << 20)
    p.add_argument("--connect-timeout", type=float, default=5.0)
    p.add_argument("--op-timeout", type=float, default=60.0)
    p = sub.add_parser("corpus")
    p.add_argument("--bytes", type=int, default=64 << 20)
    p.add_argument("--seed", type=int, default=20261126)
    p.add_argument("--out", required=True)
    args = ap.parse_args()
    {"echo": cmd_echo, "connect": cmd_connect, "pingpong": cmd_pingpong,
     "udpecho": cmd_udpecho, "udpping": cmd_udpping, "hold": cmd_hold,
     "sink": cmd_sink, "blast": cmd_blast,
     "corpus": cmd_corpus}[args.cmd](args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
