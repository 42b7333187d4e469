#!/usr/bin/env python3
"""make soak: mixed traffic through one adit server and client for a while, watching both processes' memory and
descriptors, which must stay flat (issue 11).

Traffic, all at once, over the client's one tunnel:
  bulk         an 8 MiB echo, again and again (SHA-256 checked)
  interactive  64-byte ping-pong, its round trips recorded
  churn        short connections: connect, 1 KiB each way, close (through -L and through -D)
  reconnects   every --reconnect-every seconds the server is stopped (SIGTERM, it drains) and started again on
               the same port; the client redials. Failures while the server is down are counted apart.

Every --sample seconds: RSS (KiB) and open descriptors of the server and the client. After the run the traffic
stops, and the last sample is compared with the first one taken after warm-up. Exit 0 when memory and descriptors
stayed flat and no byte was lost; 1 otherwise.

  python3 Tests/soak/soak.py --seconds 3600          # what `make soak` runs (SOAK_SECONDS)
  python3 Tests/soak/soak.py --seconds 120           # what CI runs
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import e2e_helpers as H  # noqa: E402


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, int] = {}
        self.rtts: list[float] = []

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.values[key] = self.values.get(key, 0) + n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=float(os.environ.get("SOAK_SECONDS", 3600)))
    ap.add_argument("--sample", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=None, help="seconds before the baseline sample (default: 10%%, 10-120 s)")
    ap.add_argument("--reconnect-every", type=float, default=None, help="default: a sixth of the run, at least 20 s")
    ap.add_argument("--bin", default=os.environ.get("ADIT_BIN", str(Path(__file__).resolve().parents[2] / ".build/release/adit")))
    ap.add_argument("--rss-growth-mib", type=float, default=16.0, help="allowed RSS growth after warm-up (MiB)")
    args = ap.parse_args()
    warmup = args.warmup if args.warmup is not None else min(120.0, max(10.0, args.seconds / 10))
    reconnect_every = args.reconnect_every or max(20.0, args.seconds / 6)
    tmp = Path(os.environ.get("SOAK_DIR", "/tmp")) / f"adit-soak-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)

    echo = H.TargetServer("echo", H.echo_handler)
    port, fwd, socks = H.free_port(), H.free_port(), H.free_port()
    server_argv = [args.bin, "server", "--listen", f"127.0.0.1:{port}", "--allow", f"127.0.0.1:{echo.port}",
                   "--drain-timeout", "5"]
    server = H.AditProcess("soak-server", server_argv, tmp / "server.log").start()
    H.wait_for_port(port, timeout=10, proc=server, connect=False)
    client = H.AditProcess("soak-client", [args.bin, "client", f"ws://127.0.0.1:{port}/",
                                           "-L", f"127.0.0.1:{fwd}:127.0.0.1:{echo.port}",
                                           "-D", f"127.0.0.1:{socks}", "--wait-for-tunnel", "10"],
                           tmp / "client.log").start()
    H.wait_tunnel_ready(fwd, timeout=15, proc=client)

    idle_at_start = (fds(server.pid), fds(client.pid))   # one idle tunnel, before any traffic
    counters = Counters()
    stop = threading.Event()
    server_down = threading.Event()
    blob = H.Blob(size=16 * H.MiB)

    def failure(kind: str, e: BaseException) -> None:
        counters.add(f"{kind} failed while the server restarted" if server_down.is_set() else f"{kind} FAILED")
        if not server_down.is_set():
            print(f"  {kind}: {type(e).__name__}: {e}", flush=True)

    def bulk() -> None:
        seed = 0
        while not stop.is_set():
            seed += 1
            try:
                with H.connect_local(fwd, timeout=10) as s:
                    s.settimeout(30)
                    out = {}
                    th = threading.Thread(target=lambda: out.update(v=H.send_blob(s, blob, 8 * H.MiB, seed=seed)), daemon=True)
                    th.start()
                    got = H.recv_all_hash(s)
                    th.join(30)
                if got != blob.digest(8 * H.MiB, seed=seed):
                    counters.add("bulk CORRUPT")
                else:
                    counters.add("bulk ok")
            except Exception as e:  # noqa: BLE001 - counted and shown
                failure("bulk", e)
                time.sleep(0.5)

    def interactive() -> None:
        while not stop.is_set():
            try:
                with H.connect_local(fwd, timeout=10) as s:
                    s.settimeout(10)
                    for _ in range(200):
                        if stop.is_set():
                            break
                        msg = os.urandom(64)
                        t0 = time.perf_counter()
                        s.sendall(msg)
                        if H.recv_exactly(s, 64) != msg:
                            counters.add("interactive CORRUPT")
                        counters.rtts.append(time.perf_counter() - t0)
                        counters.add("interactive ok")
                        time.sleep(0.01)
            except Exception as e:  # noqa: BLE001
                failure("interactive", e)
                time.sleep(0.5)

    def churn(via_socks: bool) -> None:
        kind = "churn -D" if via_socks else "churn -L"
        while not stop.is_set():
            try:
                if via_socks:
                    s = H.connect_local(socks, timeout=10)
                    s.sendall(b"\x05\x01\x00")
                    H.recv_exactly(s, 2)
                    s.sendall(b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + echo.port.to_bytes(2, "big"))
                    if H.recv_exactly(s, 10)[1] != 0:
                        raise ConnectionError("SOCKS refused")
                else:
                    s = H.connect_local(fwd, timeout=10)
                with s:
                    s.settimeout(10)
                    msg = os.urandom(1024)
                    s.sendall(msg)
                    ok = H.recv_exactly(s, 1024) == msg
                counters.add(f"{kind} ok" if ok else f"{kind} CORRUPT")
            except Exception as e:  # noqa: BLE001
                failure(kind, e)
                time.sleep(0.2)
            time.sleep(0.02)

    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in
               [(bulk, ()), (interactive, ()), (churn, (False,)), (churn, (True,))]]
    for th in threads:
        th.start()

    samples: list[tuple[float, int, int, int, int]] = []
    t_start = time.monotonic()
    next_restart = t_start + reconnect_every
    restarts = 0
    print(f"soak for {args.seconds:.0f}s (warm-up {warmup:.0f}s, server restart every {reconnect_every:.0f}s); "
          f"logs in {tmp}", flush=True)
    print(f"{'t (s)':>7} {'server RSS':>11} {'fds':>4} {'client RSS':>11} {'fds':>4}  traffic", flush=True)
    baseline = None          # the client lives the whole run: its first sample after warm-up
    server_baseline = None   # the server restarts: the first sample 10 s into its current life
    server_born = t_start
    while time.monotonic() - t_start < args.seconds:
        time.sleep(args.sample)
        now = time.monotonic()
        if now >= next_restart:
            server_down.set()
            server.stop(grace=10)
            server = H.AditProcess("soak-server", server_argv, tmp / "server.log").start()
            H.wait_for_port(port, timeout=10, proc=server, connect=False)
            H.wait_tunnel_ready(fwd, timeout=20, proc=client)
            time.sleep(1)
            server_down.clear()
            restarts += 1
            next_restart = now + reconnect_every
            server_born, server_baseline = time.monotonic(), None
            continue
        if not (server.alive() and client.alive()):
            print("a process died", flush=True)
            break
        row = (now - t_start, server.rss_kib() or 0, fds(server.pid), client.rss_kib() or 0, fds(client.pid))
        samples.append(row)
        if baseline is None and row[0] >= warmup:
            baseline = row
        if server_baseline is None and now - server_born >= min(warmup, 10.0) and row[0] >= warmup:
            server_baseline = row
        with counters.lock:
            brief = ", ".join(f"{k} {v}" for k, v in sorted(counters.values.items()))
        print(f"{row[0]:7.0f} {row[1] // 1024:8d} MiB {row[2]:4d} {row[3] // 1024:8d} MiB {row[4]:4d}  {brief}", flush=True)

    stop.set()
    for th in threads:
        th.join(40)
    time.sleep(2)   # streams end; descriptors go
    end = (time.monotonic() - t_start, server.rss_kib() or 0, fds(server.pid), client.rss_kib() or 0, fds(client.pid))
    alive = server.alive() and client.alive()
    client.stop()
    server.stop()
    echo.stop()

    problems = []
    if not alive:
        problems.append("a process died during the soak")
    values = counters.values
    for key, n in values.items():
        if ("FAILED" in key or "CORRUPT" in key) and n:
            problems.append(f"{key}: {n}")
    if baseline is None:
        problems.append("the run was shorter than the warm-up: nothing to compare")
    else:
        last = samples[-1]
        for name, i, base in (("server", 1, server_baseline or baseline), ("client", 3, baseline)):
            growth = (last[i] - base[i]) / 1024
            if growth > args.rss_growth_mib:
                problems.append(f"{name} RSS grew {growth:.1f} MiB after warm-up ({base[i] // 1024} -> {last[i] // 1024} MiB)")
        # descriptors with the traffic stopped: back to what the idle tunnel held before it started
        if end[2] > idle_at_start[0] + 2 or end[4] > idle_at_start[1] + 2:
            problems.append(f"descriptors left with no traffic: server {end[2]}, client {end[4]} "
                            f"(idle before the traffic: {idle_at_start[0]}, {idle_at_start[1]})")
    rtts = sorted(counters.rtts)
    if rtts:
        p = lambda q: rtts[min(len(rtts) - 1, int(q * len(rtts)))] * 1e6  # noqa: E731
        print(f"interactive round trips: p50 {p(0.5):.0f} us, p99 {p(0.99):.0f} us over {len(rtts)}")
    print(f"server restarts: {restarts}; idle descriptors at the end: server {end[2]}, client {end[4]} "
          f"(before the traffic: {idle_at_start[0]}, {idle_at_start[1]}); "
          f"RSS at the end: server {end[1] // 1024} MiB, client {end[3] // 1024} MiB")
    print("totals: " + ", ".join(f"{k} {v}" for k, v in sorted(values.items())))
    if problems:
        print("SOAK FAILED:\n  " + "\n  ".join(problems))
        return 1
    print("soak ok: memory and descriptors flat, every byte checked")
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sys.exit(main())
