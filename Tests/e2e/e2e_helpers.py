"""Helpers for the Adit end-to-end tests.

Everything here runs on 127.0.0.1 only. Processes are started and stopped by PID;
every process and server thread is registered so that the timeout watchdog in
conftest.py can clean up even when a test hangs.
"""

from __future__ import annotations

import hashlib
import os
import queue
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

CHUNK = 256 * KiB  # large chunks so that Python is not the bottleneck

# ---------------------------------------------------------------------------
# Time bounds. Every bound a pass/fail check waits for or compares against is multiplied by
# ADIT_E2E_TIMEOUT_SCALE (e.g. 3 for a debug build or a sanitizer run, more on a loaded machine):
#  - the helpers below that wait for an event (wait_until, wait_for_port, wait_for_log, wait_tunnel_ready,
#    wait_closed, refused_locally, connect_local, make_probe, join_all, TargetServer.wait_results) scale the
#    `timeout` they are given themselves: pass them the unscaled figure, never H.scaled(...);
#  - a test that measures a duration and compares it, or sets a socket or subprocess timeout itself, uses
#    scaled(seconds).
# Timing claims (throughput, latency) belong in the benchmarks, not in pass/fail tests; where a test checks a
# promise with a figure ("the port is free within 1 s of kill -9"), the figure stays in its name and the
# check compares against scaled(figure).


def timeout_scale() -> float:
    """ADIT_E2E_TIMEOUT_SCALE (default 1); conftest.py multiplies the per-test deadlines by it too."""
    raw = os.environ.get("ADIT_E2E_TIMEOUT_SCALE", "") or "1"
    try:
        v = float(raw)
    except ValueError:
        v = -1.0
    if not v > 0:
        raise RuntimeError(f"ADIT_E2E_TIMEOUT_SCALE={raw!r}: a positive number is needed (e.g. 3)")
    return v


def scaled(seconds: float) -> float:
    """`seconds` times ADIT_E2E_TIMEOUT_SCALE: the bound to use for a wait or a duration check."""
    return seconds * timeout_scale()

# Text that must never appear in adit's output: Swift runtime traps, backtraces.
CRASH_MARKERS = (
    "Fatal error",
    "fatalError",
    "Precondition failed",
    "Assertion failed",
    "Stack dump",
    "Current stack trace",
    "Program crashed",
    "Backtrace",
    "Illegal instruction",
    "Segmentation fault",
)

# ---------------------------------------------------------------------------
# Registry of live processes (for the hard watchdog and the session end).

_live_procs: dict[int, "AditProcess"] = {}
_live_lock = threading.Lock()


def kill_all_live_processes() -> None:
    """SIGKILL every process this suite started and that is still registered (by PID)."""
    with _live_lock:
        procs = list(_live_procs.values())
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass


# ---------------------------------------------------------------------------
# Ports


_handed_out: set[int] = set()
_port_lock = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now.

    Picked outside the kernel's ephemeral range (32768-60999 on Debian) so that
    outgoing connections of the tests themselves cannot grab it before the
    process under test binds it. Never hands out the same port twice per run.
    """
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    with _port_lock:
        for _ in range(2000):
            port = rng.randrange(20000, 32000)
            if port in _handed_out:
                continue
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                s.close()
            _handed_out.add(port)
            return port
    raise RuntimeError("no free port found")


def port_accepts(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_listening(port: int) -> bool:
    """True if some socket is in LISTEN state on `port` (from /proc/net/tcp{,6}).

    Unlike a test connect, this has no side effect: a connect to an adit client's
    forward would open a stream to the target."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1",
                  proc: "AditProcess | None" = None, connect: bool = True) -> None:
    """Wait until a TCP connect to host:port succeeds (connect=False: until the
    port is in LISTEN state, without connecting). Fails early if proc exits. `timeout` is scaled."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        if (port_accepts(port, host) if connect else port_listening(port)):
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"{proc.name} exited with code {proc.returncode} before {host}:{port} accepted "
                f"connections; log:\n{proc.log_tail()}")
        if time.monotonic() > deadline:
            extra = f"; log:\n{proc.log_tail()}" if proc is not None else ""
            raise AssertionError(f"{host}:{port} did not accept connections within {timeout:g}s{extra}")
        time.sleep(0.025)


def wait_until(pred: Callable[[], object], timeout: float, interval: float = 0.05,
               what: str = "condition") -> object:
    """Poll `pred` until it is true (returns its value); fail after `timeout` (scaled) seconds."""
    timeout = scaled(timeout)
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


# ---------------------------------------------------------------------------
# Processes


def read_rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


class AditProcess:
    """One adit process; stdout and stderr go to one log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None):
        self.name = name
        self.argv = list(argv)
        self.env = env or {}
        self.log_path = Path(log_path)
        self.popen: subprocess.Popen | None = None
        self.killed_by_us = False
        self.port: int | None = None      # server: its listen port
        self.url: str | None = None       # server: the ws:// URL of it

    # -- lifecycle -------------------------------------------------------
    def start(self) -> "AditProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"### {' '.join(self.argv)}\n".encode())
            log.flush()
            self.popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True, env={**_child_env(), **self.env})
        with _live_lock:
            _live_procs[self.popen.pid] = self
        return self

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.returncode

    def poll(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _unregister(self) -> None:
        if self.popen is not None:
            with _live_lock:
                _live_procs.pop(self.popen.pid, None)

    def signal(self, sig: int) -> None:
        if self.alive():
            self.killed_by_us = True
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL by PID and reap."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.killed_by_us = True
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._unregister()

    def stop(self, grace: float = 5.0) -> int | None:
        """SIGTERM, wait up to `grace` s, then SIGKILL. Returns the exit code."""
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.killed_by_us = True
            try:
                os.kill(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.kill()
        self._unregister()
        return self.popen.returncode

    # -- logs --------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, max_lines: int = 150) -> str:
        lines = self.log_text().splitlines()
        if len(lines) > max_lines:
            lines = [f"... ({len(lines) - max_lines} earlier lines in {self.log_path})"] + lines[-max_lines:]
        return "\n".join(lines)

    def log_mark(self) -> int:
        """The current end of the log; pass it as `since` to look only at later lines."""
        return len(self.log_text())

    def log_lines_matching(self, needle: str, since: int = 0) -> list[str]:
        n = needle.lower()
        return [ln for ln in self.log_text()[since:].splitlines() if n in ln.lower()]

    def wait_for_log(self, needle: str, timeout: float = 5.0, since: int = 0) -> str:
        """Wait until a log line (after offset `since`) contains `needle`
        (case-insensitive); return that line. `timeout` is scaled."""
        timeout = scaled(timeout)
        deadline = time.monotonic() + timeout
        while True:
            hits = self.log_lines_matching(needle, since)
            if hits:
                return hits[0]
            if self.poll() is not None:
                # It will never come: say so at once, with the log.
                raise AssertionError(f"{self.name} exited with code {self.returncode} before logging {needle!r}; "
                                     f"log:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name}: no log line containing {needle!r} within {timeout:g}s; log:\n"
                    f"{self.log_tail()}")
            time.sleep(0.05)

    def crash_lines(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines()
                if any(m.lower() in ln.lower() for m in CRASH_MARKERS)]

    def rss_kib(self) -> int | None:
        return read_rss_kib(self.pid) if self.alive() else None

    def __repr__(self) -> str:
        return f"<AditProcess {self.name} pid={self.popen.pid if self.popen else None}>"


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    # adit must never pick up a proxy from the test environment.
    for k in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        env.pop(k, None)
    # Nor options from the shell that runs the tests (ADIT_LISTEN, ADIT_CONFIG, ADIT_TOKEN, …): a test that wants
    # one passes it itself. The suite's own settings (ADIT_E2E_*, ADIT_BIN) set nothing in adit.
    for k in [k for k in env if k.upper().startswith("ADIT_") and not k.upper().startswith(("ADIT_E2E_", "ADIT_BIN", "ADIT_DYNAMIC_BIN"))]:
        env.pop(k)
    return env


# ---------------------------------------------------------------------------
# Test data


class Blob:
    """A pre-generated random buffer; streams are cut from it with a rotating
    offset so that the data is not periodic at any small period."""

    def __init__(self, size: int = 16 * MiB, seed: int = 0xAD17):
        rng = random.Random(seed)
        self.data = rng.randbytes(size)
        self.view = memoryview(self.data)
        self.size = size

    def chunks(self, total: int, seed: int = 0, chunk: int = CHUNK) -> Iterator[memoryview]:
        """Yield memoryviews adding up to exactly `total` bytes."""
        span = self.size - chunk
        pos = (seed * 7_919_993 + 12_345) % span
        left = total
        while left > 0:
            n = min(chunk, left)
            yield self.view[pos:pos + n]
            left -= n
            pos = (pos + n + 4_099) % span  # 4099 skips: the stream never repeats with period 16 MiB

    def bytes(self, total: int, seed: int = 0) -> bytes:
        return b"".join(bytes(c) for c in self.chunks(total, seed))

    def digest(self, total: int, seed: int = 0) -> tuple[int, str]:
        h = hashlib.sha256()
        for c in self.chunks(total, seed):
            h.update(c)
        return total, h.hexdigest()


class Progress:
    """A byte counter shared between threads (only ever written by one thread)."""

    def __init__(self) -> None:
        self.bytes = 0
        self.done = False
        self.error: BaseException | None = None


def send_blob(sock: socket.socket, blob: Blob, total: int, seed: int = 0,
              progress: Progress | None = None, shut_wr: bool = True,
              stop: threading.Event | None = None) -> tuple[int, str]:
    """Send `total` bytes from blob, hashing them. Returns (count, sha256 hex) of what was sent."""
    h = hashlib.sha256()
    sent = 0
    for c in blob.chunks(total, seed):
        if stop is not None and stop.is_set():
            break
        sock.sendall(c)
        h.update(c)
        sent += len(c)
        if progress is not None:
            progress.bytes = sent
    if shut_wr:
        sock.shutdown(socket.SHUT_WR)
    if progress is not None:
        progress.done = True
    return sent, h.hexdigest()


def recv_all_hash(sock: socket.socket, progress: Progress | None = None,
                  bufsize: int = 1 * MiB) -> tuple[int, str]:
    """Read until EOF, hashing. Returns (count, sha256 hex)."""
    h = hashlib.sha256()
    buf = bytearray(bufsize)
    mv = memoryview(buf)
    total = 0
    while True:
        n = sock.recv_into(buf)
        if n == 0:
            break
        h.update(mv[:n])
        total += n
        if progress is not None:
            progress.bytes = total
    if progress is not None:
        progress.done = True
    return total, h.hexdigest()


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = sock.recv(n - len(out))
        if not b:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += b
    return bytes(out)


def recv_until_eof(sock: socket.socket, limit: int = 64 * MiB) -> bytes:
    out = bytearray()
    while True:
        b = sock.recv(256 * KiB)
        if not b:
            return bytes(out)
        out += b
        if len(out) > limit:
            raise AssertionError(f"more than {limit} bytes before EOF")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wait_closed(sock: socket.socket, timeout: float) -> tuple[str, bytes]:
    """Wait until the peer closes `sock` (EOF or reset). Returns (how, data received before).
    `timeout` is scaled."""
    timeout = scaled(timeout)
    sock.settimeout(timeout)
    data = bytearray()
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"connection still open after {timeout:g}s (received {len(data)} bytes)")
        sock.settimeout(left)
        try:
            b = sock.recv(64 * KiB)
        except (ConnectionResetError, BrokenPipeError):
            return "reset", bytes(data)
        except socket.timeout:
            raise AssertionError(f"connection still open after {timeout:g}s (received {len(data)} bytes)")
        if not b:
            return "eof", bytes(data)
        data += b


def refused_locally(port: int, timeout: float = 10.0, send: bytes = b"") -> tuple[str, bytes]:
    """Connect to a forward whose stream the tunnel refuses, and report how the local connection ended:
    ("reset", b"") is what adit does (an abort, so a refusal never looks like an empty answer). The reset can
    come so fast that connect() itself reports it. `timeout` is scaled (by wait_closed)."""
    try:
        s = connect_local(port)
    except ConnectionResetError:
        return "reset", b""
    with s:
        if send:
            try:
                s.sendall(send)
            except OSError:
                pass
        return wait_closed(s, timeout=timeout)


def connect_local(port: int, timeout: float = 5.0) -> socket.socket:
    """A TCP_NODELAY connection to 127.0.0.1:port; `timeout` (scaled) is its connect and socket timeout."""
    s = socket.create_connection(("127.0.0.1", port), timeout=scaled(timeout))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def make_probe(port: int, timeout: float = 2.0) -> bool:
    """One echo round trip through a forward whose target is an echo server (`timeout` is scaled)."""
    try:
        with connect_local(port, timeout=timeout) as s:   # connect_local scales it
            msg = b"adit-probe-" + os.urandom(8).hex().encode()
            s.sendall(msg)
            got = recv_exactly(s, len(msg))
            return got == msg
    except (OSError, EOFError):
        return False


def wait_tunnel_ready(port: int, timeout: float = 15.0, proc: AditProcess | None = None) -> float:
    """Poll an echo forward until an echo round trip succeeds. Returns seconds waited. `timeout` is scaled."""
    timeout = scaled(timeout)
    t0 = time.monotonic()
    while True:
        if make_probe(port):
            return time.monotonic() - t0
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"{proc.name} exited with code {proc.returncode}; log:\n{proc.log_tail()}")
        if time.monotonic() - t0 > timeout:
            extra = f"; {proc.name} log:\n{proc.log_tail()}" if proc is not None else ""
            raise AssertionError(f"no echo through the tunnel on port {port} within {timeout:g}s{extra}")
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# Target servers (what adit connects to), each on its own port, threaded.


class TargetServer:
    """A threaded TCP server on 127.0.0.1; `handler(conn, server)` runs per connection."""

    def __init__(self, name: str, handler: Callable[[socket.socket, "TargetServer"], object],
                 rcvbuf: int | None = None, conn_timeout: float = 300.0, host: str = "127.0.0.1"):
        self.name = name
        self.handler = handler
        self.conn_timeout = conn_timeout
        self.host = host
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if rcvbuf is not None:  # inherited by accepted sockets; disables autotuning
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, 0))
        self.sock.listen(1024)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.stopping = threading.Event()
        self.lock = threading.Lock()
        self.conns: list[socket.socket] = []
        self.threads: list[threading.Thread] = []
        self.results: list[object] = []   # whatever the handlers return, in completion order
        self.errors: list[str] = []
        self.accepted = 0
        self.bytes_in = 0                 # updated by handlers that count
        self._acceptor = threading.Thread(target=self._accept_loop, name=f"{name}-accept", daemon=True)
        self._acceptor.start()

    def _accept_loop(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            conn.settimeout(self.conn_timeout)
            with self.lock:
                self.accepted += 1
                self.conns.append(conn)
                t = threading.Thread(target=self._run, args=(conn,), name=f"{self.name}-conn", daemon=True)
                self.threads.append(t)
            t.start()

    def _run(self, conn: socket.socket) -> None:
        try:
            r = self.handler(conn, self)
            with self.lock:
                self.results.append(r)
        except Exception as e:  # recorded for the test to inspect
            if not self.stopping.is_set():
                with self.lock:
                    self.errors.append(f"{type(e).__name__}: {e}")
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def wait_results(self, n: int, timeout: float, allow_errors: bool = False) -> list[object]:
        """Wait until n connections have finished (`timeout` scaled by wait_until); fail if a handler raised
        (unless allow_errors)."""
        try:
            wait_until(lambda: len(self.results) + len(self.errors) >= n, timeout,
                       what=f"{n} finished connections on target {self.name}")
        except AssertionError as e:
            raise AssertionError(f"{e} (have {len(self.results)} results, {self.accepted} accepted, "
                                 f"errors {self.errors[:3]})") from None
        if not allow_errors:
            assert not self.errors, f"target {self.name}: {len(self.errors)} handler errors: {self.errors[:5]}"
        return list(self.results)

    def stop(self) -> None:
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            conns = list(self.conns)
            threads = list(self.threads)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass
        self._acceptor.join(timeout=2)
        for t in threads:
            t.join(timeout=2)


def echo_handler(conn: socket.socket, server: TargetServer) -> int:
    """Echo everything; on EOF finish echoing, then send EOF. Returns bytes echoed."""
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    total = 0
    while True:
        n = conn.recv_into(buf)
        if n == 0:
            break
        conn.sendall(mv[:n])
        total += n
    conn.shutdown(socket.SHUT_WR)
    return total


def make_hash_sink_handler(pace: Callable[[float], float | None] | None = None,
                           reply: bool = True) -> Callable[[socket.socket, TargetServer], tuple[int, str]]:
    """Read until EOF and hash; then reply b"<count> <sha256hex>\\n" and close.

    `pace(t)` (t = seconds since accept) may return a read rate in bytes/s to
    throttle reading; None means full speed.
    """

    def handler(conn: socket.socket, server: TargetServer) -> tuple[int, str]:
        h = hashlib.sha256()
        buf = bytearray(1 * MiB)
        mv = memoryview(buf)
        total = 0
        t0 = time.monotonic()
        next_read = t0
        while True:
            rate = pace(time.monotonic() - t0) if pace is not None else None
            if rate is None:
                n = conn.recv_into(buf)
            else:
                # at most rate/16 bytes per read, reads spaced so the average rate holds
                delay = next_read - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                step = max(1, int(rate / 16))
                n = conn.recv_into(mv[:step])
                next_read = max(next_read, time.monotonic() - 1.0) + n / rate
            if n == 0:
                break
            h.update(mv[:n])
            total += n
            with server.lock:
                server.bytes_in += n
        result = (total, h.hexdigest())
        if reply:
            conn.sendall(f"{total} {result[1]}\n".encode())
            conn.shutdown(socket.SHUT_WR)
        return result

    return handler


def make_source_handler(blob: Blob, total: int, seed: int = 0) -> Callable[[socket.socket, TargetServer], tuple[int, str]]:
    """Send `total` bytes of blob, then EOF; then drain the peer until EOF. Returns (count, sha)."""

    def handler(conn: socket.socket, server: TargetServer) -> tuple[int, str]:
        r = send_blob(conn, blob, total, seed)
        try:
            while conn.recv(64 * KiB):
                pass
        except OSError:
            pass
        return r

    return handler


def read_sink_reply(sock: socket.socket) -> tuple[int, str]:
    line = recv_until_eof(sock, limit=4096).decode().strip()
    count, sha = line.split()
    return int(count), sha


# ---------------------------------------------------------------------------
# RSS sampling


class RssSampler:
    """Samples VmRSS (KiB) of some PIDs every `interval` s in a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.5):
        self.pids = dict(pids)
        self.interval = interval
        self.samples: list[tuple[float, dict[str, int | None]]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)
        self.t0 = 0.0

    def start(self) -> "RssSampler":
        self.t0 = time.monotonic()
        self._t.start()
        return self

    def _loop(self) -> None:
        while True:
            t = time.monotonic() - self.t0
            self.samples.append((t, {k: read_rss_kib(p) for k, p in self.pids.items()}))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._t.join(timeout=5)

    def series(self, name: str, t_from: float = 0.0, t_to: float = float("inf")) -> list[tuple[float, int]]:
        return [(t, d[name]) for t, d in self.samples if t_from <= t <= t_to and d.get(name) is not None]

    def value_at(self, name: str, t: float) -> int:
        """The first sample at or after t."""
        for ts, v in self.series(name):
            if ts >= t:
                return v
        raise AssertionError(f"no RSS sample of {name} at or after {t}s")

    def table(self) -> str:
        names = list(self.pids)
        rows = ["t(s)   " + "  ".join(f"{n:>12}" for n in names) + "   (VmRSS KiB)"]
        for t, d in self.samples:
            rows.append(f"{t:6.1f} " + "  ".join(f"{(d.get(n) or 0):>12}" for n in names))
        return "\n".join(rows)


def join_all(threads: Iterable[threading.Thread], timeout: float) -> None:
    """Join all threads within `timeout` (scaled) seconds in total."""
    deadline = time.monotonic() + scaled(timeout)
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))


# ---------------------------------------------------------------------------
# UDP targets and port states (test_udp.py, test_reverse.py)


def udp_port_bound(port: int) -> bool:
    """True if some UDP socket is bound to `port` (from /proc/net/udp{,6}); no datagram is sent."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    if int(line.split()[1].rsplit(":", 1)[1], 16) == port:
                        return True
        except FileNotFoundError:
            continue
    return False


def free_udp_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (from free_port's range, never handed out twice)."""
    for _ in range(200):
        port = free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free UDP port found")


def tcp_port_released(port: int, host: str = "127.0.0.1") -> str | None:
    """None when nothing listens on host:port any more (a connect is refused and a listener can bind it,
    with SO_REUSEADDR as servers do); otherwise a short description of what is still there."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return "a connect succeeded"
    except ConnectionRefusedError:
        pass
    except OSError as e:
        return f"connect failed with {e!r}, not refused"
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(1)
    except OSError as e:
        return f"bind failed: {e!r}"
    finally:
        s.close()
    return None


class UDPEchoServer:
    """A UDP echo on 127.0.0.1 in a thread: every datagram goes back to its sender unchanged.
    Records what it received (count, sizes, senders) for the test to check."""

    def __init__(self, name: str = "udp-echo", host: str = "127.0.0.1", port: int = 0, prefix: bytes = b""):
        self.name = name
        self.prefix = prefix          # prepended to every reply (to tell two targets apart)
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * MiB)
        self.sock.bind((host, port))
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.count = 0
        self.sizes: list[int] = []
        self.senders: set = set()
        self.stopping = threading.Event()
        self._t = threading.Thread(target=self._loop, name=f"{name}-loop", daemon=True)
        self._t.start()

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                if self.stopping.is_set():
                    return
                continue
            with self.lock:
                self.count += 1
                self.sizes.append(len(data))
                self.senders.add(addr)
            try:
                self.sock.sendto(self.prefix + data, addr)
            except OSError:
                pass

    def stop(self) -> None:
        self.stopping.set()
        self._t.join(timeout=2)
        self.sock.close()


# ---------------------------------------------------------------------------
# An HTTP/1.1 origin server (test_socks_front.py, test_http_proxy_front.py)


class HttpRecord:
    """One request as the origin saw it."""

    def __init__(self, conn: int, method: str, target: str, headers: dict[str, str], count: int, sha: str):
        self.conn = conn          # number of the TCP connection it came on (1, 2, … per origin)
        self.method = method
        self.target = target      # the request-target as received ("/path" or "http://…")
        self.headers = headers    # names lower-cased
        self.count = count        # body bytes
        self.sha = sha            # SHA-256 of the body

    def __repr__(self) -> str:
        return f"<HttpRecord conn={self.conn} {self.method} {self.target} body={self.count}>"


class HttpOrigin:
    """An HTTP/1.1 server with keep-alive in threads of this process, on 127.0.0.1 or ::1, optionally TLS.

      GET  /text/NAME         -> "hello NAME\\n"
      GET  /blob/SIZE/SEED    -> SIZE bytes of blob.chunks(SIZE, SEED)
      POST|PUT anything       -> reads the body (Content-Length or chunked), answers "COUNT SHA256\\n"

    Every request is recorded in `requests` (HttpRecord); `connections` counts accepted connections."""

    def __init__(self, host: str = "127.0.0.1", blob: Blob | None = None, ssl_context=None):
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        origin = self
        self.blob = blob
        self.host = host
        self.lock = threading.Lock()
        self.requests: list[HttpRecord] = []
        self.connections = 0
        self.errors: list[str] = []
        self._socks: list[socket.socket] = []

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            timeout = 60

            def setup(self):
                if ssl_context is not None:
                    self.request.settimeout(self.timeout)
                    self.request.do_handshake()
                super().setup()
                with origin.lock:
                    origin.connections += 1
                    self.conn_no = origin.connections

            def log_message(self, *args):
                pass

            def _body(self) -> tuple[int, str]:
                h = hashlib.sha256()
                n = 0
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    while True:
                        size = int(self.rfile.readline(1024).split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                                pass
                            return n, h.hexdigest()
                        data = self._read(size)
                        h.update(data)
                        n += len(data)
                        if self.rfile.readline(1024).strip():
                            raise ValueError("chunk not followed by CRLF")
                left = int(self.headers.get("Content-Length") or 0)
                while left:
                    data = self._read(min(left, 1 * MiB))
                    h.update(data)
                    n += len(data)
                    left -= len(data)
                return n, h.hexdigest()

            def _read(self, size: int) -> bytes:
                data = self.rfile.read(size)
                if len(data) != size:
                    raise EOFError(f"body cut short: {len(data)} of {size} bytes")
                return data

            def _record(self, count: int, sha: str) -> None:
                with origin.lock:
                    origin.requests.append(HttpRecord(self.conn_no, self.command, self.path,
                                                      {k.lower(): v for k, v in self.headers.items()}, count, sha))

            def _answer(self, chunks, length: int, ctype: str = "text/plain") -> None:
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    for c in chunks:
                        self.wfile.write(c)
                self.wfile.flush()

            def do_GET(self):
                try:
                    count, sha = self._body()
                    self._record(count, sha)
                    parts = self.path.split("?")[0].split("/")
                    if len(parts) == 4 and parts[1] == "blob" and origin.blob is not None:
                        size, seed = int(parts[2]), int(parts[3])
                        self._answer(origin.blob.chunks(size, seed), size, "application/octet-stream")
                    elif len(parts) >= 3 and parts[1] == "text":
                        body = f"hello {'/'.join(parts[2:])}\n".encode()
                        self._answer([body], len(body))
                    else:
                        self.send_error(404)
                except Exception as e:
                    with origin.lock:
                        origin.errors.append(f"{type(e).__name__}: {e}")
                    raise

            do_HEAD = do_GET

            def do_POST(self):
                try:
                    count, sha = self._body()
                    self._record(count, sha)
                    body = f"{count} {sha}\n".encode()
                    self._answer([body], len(body))
                except Exception as e:
                    with origin.lock:
                        origin.errors.append(f"{type(e).__name__}: {e}")
                    raise

            do_PUT = do_POST

        class Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
            daemon_threads = True
            allow_reuse_address = True

            def get_request(self):
                sock, addr = self.socket.accept()
                with origin.lock:
                    origin._socks.append(sock)
                if ssl_context is not None:
                    sock = ssl_context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                return sock, addr

            def handle_error(self, request, client_address):
                pass    # recorded in origin.errors where it matters

        self.httpd = Server((host, 0), Handler)
        self.port = self.httpd.server_address[1]
        self._t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                   name=f"http-origin-{self.port}", daemon=True)
        self._t.start()

    def url(self, path: str, scheme: str = "http", host: str | None = None) -> str:
        h = host or self.host
        h = f"[{h}]" if ":" in h else h
        return f"{scheme}://{h}:{self.port}{path}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._t.join(timeout=2)


def silent_port() -> tuple[socket.socket, list[socket.socket]]:
    """A port on 127.0.0.1 whose listener never answers a new SYN: listen(0), never accept, the accept
    queue filled by our own connections, so the kernel drops further SYNs and a connect times out.
    Returns (listener, fillers); close them all when done. Raises RuntimeError if the kernel still
    completes connections."""
    lst = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lst.bind(("127.0.0.1", free_port()))
    lst.listen(0)
    port = lst.getsockname()[1]
    fillers: list[socket.socket] = []
    import select
    for _ in range(8):
        c = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
        _, w, _ = select.select([], [c], [], 0.3)
        if not w:      # this SYN was dropped: the queue is full
            return lst, fillers
    for s in fillers + [lst]:
        s.close()
    raise RuntimeError("the kernel completes connections beyond a full accept queue")


def local_credentials(source: str, user: str, password: str, tmp_path) -> tuple[list[str], dict[str, str] | None]:
    """Client flags (and environment) giving -D/--http-proxy the local credentials, the password from the
    environment ("env") or from a file ("file")."""
    if source == "env":
        return ["--local-user", user], {"ADIT_LOCAL_PASSWORD": password}
    pw = tmp_path / "local-pass"
    pw.write_text(password + "\n")
    return ["--local-user", user, "--local-password-file", str(pw)], None


# ---------------------------------------------------------------------------
# Sockets of a process (which peer a process is really talking to), and the tunnel's adit.v1 frames


def established_peers(pid: int) -> list[tuple[str, int, str, int]]:
    """(local address, local port, remote address, remote port) of every ESTABLISHED TCP socket of process `pid`,
    from /proc: who a process really talks to, e.g. a client's tunnel going to a proxy rather than to the server."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except FileNotFoundError:
        return []

    def addr(hexaddr: str) -> tuple[str, int]:
        host, port = hexaddr.split(":")
        raw = bytes.fromhex(host)
        if len(raw) == 4:
            ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
        else:
            ip = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            if ip.startswith("::ffff:"):
                ip = ip[7:]
        return ip, int(port, 16)

    out = []
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields[3] == "01" and fields[9] in inodes:
                        out.append((*addr(fields[1]), *addr(fields[2])))
        except FileNotFoundError:
            continue
    return out


def remote_ports(pid: int) -> set[int]:
    """The remote ports of the established TCP connections of process `pid`."""
    return {p[3] for p in established_peers(pid)}


# adit.v1 frames (docs/protocol.md §2): a 9-byte header, Length (24) | Type (8) | Flags (8) | R+Stream ID (32).

MUX_DATA, MUX_OPEN, MUX_OPEN_OK, MUX_RESET, MUX_WINDOW_UPDATE, MUX_PING, MUX_PONG, MUX_GOAWAY, MUX_HELLO, MUX_LISTEN = \
    range(10)
MUX_FIN = 0x1


def mux_frame(ftype: int, stream: int, payload: bytes = b"", flags: int = 0) -> bytes:
    return ((len(payload) << 8) | ftype).to_bytes(4, "big") + bytes([flags]) + stream.to_bytes(4, "big") + payload


def mux_parse(message: bytes) -> list[tuple[int, int, int, bytes]]:
    """The frames of one binary message: (type, flags, stream ID, payload)."""
    out, i = [], 0
    while i < len(message):
        if len(message) - i < 9:
            raise ValueError(f"{len(message) - i} bytes left, less than a frame header")
        word = int.from_bytes(message[i:i + 4], "big")
        length, ftype = word >> 8, word & 0xFF
        flags = message[i + 4]
        stream = int.from_bytes(message[i + 5:i + 9], "big") & 0x7FFFFFFF
        payload = message[i + 9:i + 9 + length]
        if len(payload) != length:
            raise ValueError("a frame spans past its message")
        out.append((ftype, flags, stream, payload))
        i += 9 + length
    return out


def mux_hello(version: int = 1, window: int = 4 * MiB, max_message: int = 1 * MiB, features: int = 0) -> bytes:
    return mux_frame(MUX_HELLO, 0, bytes([version]) + window.to_bytes(4, "big") + max_message.to_bytes(4, "big")
                     + features.to_bytes(4, "big"))


def mux_ipv4_target(host: str, port: int) -> bytes:
    return b"\x01" + socket.inet_aton(host) + port.to_bytes(2, "big")


class RawSession:
    """One adit.v1 WebSocket to an adit server, spoken frame by frame by the test (Python `websockets`)."""

    def __init__(self, url: str):
        from websockets.sync.client import connect
        scale = timeout_scale()
        self.ws = connect(url, subprotocols=["adit.v1"], compression=None, proxy=None, open_timeout=10 * scale,
                          close_timeout=5 * scale, max_size=None).__enter__()   # (not a `with`: tests close it)
        assert self.ws.subprotocol == "adit.v1"
        self.pending: list[tuple[int, int, int, bytes]] = []

    def send(self, *frames: bytes) -> None:
        self.ws.send(b"".join(frames))

    def next_frame(self, timeout: float = 10.0, skip=(MUX_WINDOW_UPDATE, MUX_PING)) -> tuple[int, int, int, bytes]:
        """The next frame from the server (WINDOW_UPDATEs and the server's own PINGs, which measure the round
        trip when the session starts, skipped unless `skip` says otherwise); websockets' ConnectionClosed if the
        session ends first. `timeout` is scaled."""
        deadline = time.monotonic() + timeout * timeout_scale()
        while True:
            while self.pending:
                f = self.pending.pop(0)
                if f[0] not in skip:
                    return f
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no frame from the server within {timeout * timeout_scale():.0f}s")
            msg = self.ws.recv(timeout=left)
            assert isinstance(msg, bytes), f"the server sent a text message: {msg!r}"
            self.pending.extend(mux_parse(msg))

    def until_closed(self, timeout: float = 10.0) -> tuple[list, Exception]:
        """Every frame until the WebSocket closes, and the ConnectionClosed that says how it closed."""
        from websockets.exceptions import ConnectionClosed
        frames = []
        try:
            while True:
                frames.append(self.next_frame(timeout, skip=()))
        except ConnectionClosed as e:
            return frames, e

    def close(self) -> None:
        self.ws.close()


def server_hello(session: RawSession) -> tuple[int, int, int, int]:
    """Read the server's HELLO: (version, initial window, max message size, features)."""
    ftype, flags, stream, payload = session.next_frame()
    assert (ftype, stream) == (MUX_HELLO, 0), f"the server's first frame is not HELLO: {(ftype, stream, payload)}"
    assert len(payload) >= 13, payload
    return (payload[0], int.from_bytes(payload[1:5], "big"), int.from_bytes(payload[5:9], "big"),
            int.from_bytes(payload[9:13], "big"))


class FaultRelay:
    """A TCP link 127.0.0.1:port -> upstream, in user space (this kernel has no netem): it delays each chunk
    (`delay`, plus up to `jitter`), stalls at random (`stall_p` of the chunks wait `stall` more: what loss looks
    like above TCP), and can go silent (`blackhole`). Each direction keeps order and holds at most `bound` chunks
    (a slow side pushes back instead of filling memory)."""

    def __init__(self, upstream_port: int, delay: float = 0.0, jitter: float = 0.0, stall_p: float = 0.0,
                 stall: tuple[float, float] = (0.1, 0.4), seed: int = 0, bound: int = 256):
        self.upstream_port = upstream_port
        self.delay, self.jitter, self.stall_p, self.stall = delay, jitter, stall_p, stall
        self.random = random.Random(seed)
        self.bound = bound
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.links: list[dict] = []       # {"socks": [a, b], "dead": Event}
        self.stalls = 0
        threading.Thread(target=self._accept, name="fault-relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                a, _ = self.listener.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                b.settimeout(None)
            except OSError:
                a.close()
                continue
            link = {"socks": [a, b], "dead": threading.Event()}
            with self.lock:
                self.links.append(link)
            for src, dst in ((a, b), (b, a)):
                q: queue.Queue = queue.Queue(maxsize=self.bound)
                threading.Thread(target=self._read, args=(src, q, link), daemon=True).start()
                threading.Thread(target=self._write, args=(dst, q, link), daemon=True).start()

    def _due(self, last: float) -> float:
        with self.lock:
            extra = self.delay + self.random.uniform(0, self.jitter)
            if self.stall_p and self.random.random() < self.stall_p:
                extra += self.random.uniform(*self.stall)
                self.stalls += 1
        return max(last, time.monotonic() + extra)

    def _read(self, src: socket.socket, q: queue.Queue, link: dict) -> None:
        last = 0.0
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if link["dead"].is_set():
                if not data:
                    return
                continue                    # a blackhole swallows everything, and says nothing
            last = self._due(last)
            q.put((last, data))
            if not data:
                return

    def _write(self, dst: socket.socket, q: queue.Queue, link: dict) -> None:
        while True:
            due, data = q.get()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            if link["dead"].is_set():
                return
            try:
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return

    def blackhole(self) -> None:
        """Every open link goes silent both ways, its sockets left open (a NAT or firewall that forgot the flow).
        New connections still pass."""
        with self.lock:
            for link in self.links:
                link["dead"].set()

    def stop(self) -> None:
        self.listener.close()
        with self.lock:
            for link in self.links:
                link["dead"].set()
                for s in link["socks"]:
                    try:
                        s.close()
                    except OSError:
                        pass


def assert_stops(proc: "AditProcess", timeout: float = 10.0) -> None:
    """A client refused for credentials (the server's 401/403, a proxy's 407, a SOCKS5 proxy's refusal) says
    why and stops with exit code 1 instead of retrying what cannot work (docs/operations.md). `timeout` is
    scaled."""
    wait_until(lambda: proc.poll() is not None, timeout, what=f"{proc.name} to stop after the refusal")
    assert proc.poll() == 1, f"{proc.name} exited with {proc.poll()}, not 1"


DELAYLINE_SOURCE = Path(__file__).resolve().parent.parent / "tools" / "delayline.c"


def delayline_binary() -> Path:
    """Tests/tools/delayline.c, compiled once per source version (with cc, or the toolchain's clang)."""
    digest = hashlib.sha256(DELAYLINE_SOURCE.read_bytes()).hexdigest()[:12]
    out = Path(tempfile.gettempdir()) / f"adit-delayline-{digest}"
    if not out.exists():
        compiler = shutil.which("cc") or shutil.which("clang") or shutil.which("gcc")
        assert compiler, "no C compiler (cc, clang or gcc) to build Tests/tools/delayline.c"
        tmp = out.with_suffix(f".{os.getpid()}")
        subprocess.run([compiler, "-O2", "-pthread", "-o", str(tmp), str(DELAYLINE_SOURCE)], check=True)
        tmp.replace(out)
    return out


class DelayLine:
    """A long fat path in user space (Tests/tools/delayline.c): 127.0.0.1:port -> 127.0.0.1:upstream_port, each
    direction a bottleneck of `rate_mbit` and `rtt_ms / 2` of delay, holding at most `hold` bytes (default 1.5 x
    the bandwidth-delay product) before the sender meets back-pressure."""

    def __init__(self, upstream_port: int, rtt_ms: float, rate_mbit: float, hold: int | None = None):
        argv = [str(delayline_binary()), "0", str(upstream_port), str(rtt_ms), str(rate_mbit)]
        if hold is not None:
            argv.append(str(hold))
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().split()
        assert line and line[0] == "ready", f"the delay line did not start: {line}"
        self.port = int(line[1])
        self.hold = int(line[3])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
