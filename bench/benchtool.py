#!/usr/bin/env python3
"""Small load tools for the Adit benchmark (stdlib only, Linux only).

Subcommands:
  echo      epoll TCP echo server on 127.0.0.1 (single thread, TCP_NODELAY);
            prints its port on stdout when listening. Also used as the
            "hold" server for idle streams.
  connect   N sequential connections: connect, send 1 byte, read 1 byte
            echo, close. Prints a JSON summary of per-connection times.
  pingpong  one connection, SIZE-byte request/echo round trips. JSON summary.
  hold      opens/holds many idle connections; driven by stdin lines:
              open N   -> grow to N established connections, each verified
                          by one 1-byte echo; prints a JSON line
              verify   -> one more 1-byte echo on every held connection
              close    -> close all, print a JSON line, exit
Every loop is bounded by a count and by a deadline.
"""

import argparse
import errno
import json
import math
import os
import select
import socket
import sys
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


def cmd_connect(args):
    deadline = time.monotonic() + args.time_limit
    samples = []
    errors = 0
    first_error = None
    perf = time.perf_counter_ns
    addr = (HOST, args.port)
    for _ in range(args.warmup + args.count):
        if time.monotonic() > deadline:
            break
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(args.op_timeout)
        try:
            t0 = perf()
            s.connect(addr)
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
    p = sub.add_parser("pingpong")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=5000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--time-limit", type=float, default=20.0)
    p.add_argument("--op-timeout", type=float, default=5.0)
    p.add_argument("--raw", action="store_true", help="include all samples (ns)")
    p = sub.add_parser("hold")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--concurrency", type=int, default=128)
    p.add_argument("--step-timeout", type=float, default=60.0)
    args = ap.parse_args()
    {"echo": cmd_echo, "connect": cmd_connect, "pingpong": cmd_pingpong,
     "hold": cmd_hold}[args.cmd](args)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(1)
