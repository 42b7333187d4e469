"""Limits and tuning options of docs/operations.md, each made observable: `--max-streams` (RESET "resource limit",
on either side), `--connect-timeout` and the "timed out" reset, "unreachable" for a name that does not resolve,
the policy connecting exactly the address it checked, `--window` (what a stalled stream holds, and the HELLO and
flow-control error on the wire), `--threads` (event-loop threads in /proc), `--tunnel-buffer` (the tunnel
socket's buffers as `ss -tm` shows them), exit code 1 for an address in use, and `adit demo`."""

import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

import e2e_helpers as H

SCALE = H.timeout_scale()
KiB, MiB = H.KiB, H.MiB


def hold_open(port: int, payload: bytes) -> socket.socket:
    """A connection through a forward to an echo target, checked with one round trip and kept open."""
    s = H.connect_local(port, timeout=10)
    s.settimeout(10 * SCALE)
    s.sendall(payload)
    assert H.recv_exactly(s, len(payload)) == payload
    return s


# ---------------------------------------------------------------------------------------------------------
# --max-streams

@pytest.mark.deadline(45)
@pytest.mark.parametrize("side,said", [("server", "resource limit reached (more than 3 streams open on this tunnel)"),
                                       ("client", "the tunnel already carries 3 connections, its limit")])
def test_max_streams_refuses_the_next_stream_until_one_ends(adit, targets, side, said):
    echo = targets.echo()
    limit = ["--max-streams", "3"]
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=limit if side == "server" else [])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=limit if side == "client" else [])
    held = [hold_open(local, f"stream {i}".encode()) for i in range(3)]   # no probe: it would be a 4th stream
    try:
        mark = client.log_mark()
        assert H.refused_locally(local, timeout=10, send=b"one too many") == ("reset", b"")
        line = client.wait_for_log("failed:", timeout=5, since=mark)
        assert said in line, line
        assert echo.accepted == 3, f"the target saw {echo.accepted} connections, the limit is 3"
        # One ends: a new stream fits again (once the end has reached both sides).
        held.pop().close()

        def fits():
            try:
                held.append(hold_open(local, b"fits again"))
                return True
            except (OSError, EOFError, AssertionError):
                return False
        H.wait_until(fits, 10, interval=0.2, what="a stream to fit after one ended")
    finally:
        for s in held:
            s.close()


# ---------------------------------------------------------------------------------------------------------
# --connect-timeout, "timed out" and "unreachable"

@pytest.mark.deadline(45)
def test_connect_timeout_resets_the_stream_with_timed_out(adit, targets):
    lst, fillers = H.silent_port()    # a listener whose backlog is full: SYNs are dropped, connects hang
    try:
        silent = lst.getsockname()[1]
        server = adit.server([f"127.0.0.1:{silent}"], extra=["--connect-timeout", "2"])
        local = H.free_port()
        client = adit.client(server.url, [(local, "127.0.0.1", silent)])
        t0 = time.monotonic()
        how, data = H.refused_locally(local, timeout=20, send=b"hello?")
        waited = time.monotonic() - t0
        assert (how, data) == ("reset", b""), (how, data)
        assert waited >= 1.8, f"reset after {waited:.2f}s, before the 2 s --connect-timeout"
        assert waited <= 2 + 6 * SCALE, f"reset only after {waited:.2f}s with --connect-timeout 2 (default 10)"
        line = client.wait_for_log(f"connection to 127.0.0.1:{silent} failed", timeout=5)
        assert "timed out" in line, line
    finally:
        for s in fillers + [lst]:
            s.close()


@pytest.mark.deadline(45)
def test_a_name_that_does_not_resolve_is_unreachable(adit, targets):
    # A label of 64 characters cannot be put in a DNS query (63 at most), so the lookup fails here, at once,
    # without a packet leaving the machine.
    name = "a" * 64 + ".invalid"
    t = adit.tunnel([], allow=["*.invalid:*"], extra_forwards=[(name, 80)])
    mark = t.client.log_mark()
    assert H.refused_locally(t.ports[0], timeout=20, send=b"x") == ("reset", b"")
    line = t.client.wait_for_log(f"connection to {name}:80 failed", timeout=10, since=mark)
    assert "unreachable" in line, line
    assert H.make_probe(t.probe_port), "the tunnel broke after an unreachable target"


# ---------------------------------------------------------------------------------------------------------
# The policy connects exactly the address it checked

def server_with_hosts(adit, hosts_text: str, allow: list[str]) -> H.AditProcess:
    """An adit server that sees its own /etc/hosts (a private mount namespace: nothing changes for the machine)."""
    hosts = adit.tmp / f"hosts-{H.free_port()}"
    hosts.write_text(hosts_text)
    port = H.free_port()
    argv = [adit.bin, "server", "--listen", f"127.0.0.1:{port}", "--log-level", "debug"]
    for a in allow:
        argv += ["--allow", a]
    adit.counter += 1
    name = f"adit-server-{adit.counter}"
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
               f'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *argv]
    proc = H.AditProcess(name, wrapper, adit.tmp / f"{name}.log")
    adit.procs.append(proc)
    proc.start()
    proc.port, proc.url = port, f"ws://127.0.0.1:{port}"
    H.wait_for_port(port, timeout=10, proc=proc, connect=False)
    return proc


class Listener:
    """An echo on one address that counts its connections."""

    def __init__(self, host: str, port: int):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.sock.listen(16)
        self.accepted = 0
        self.host = host
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with c:
                c.settimeout(10)
                try:
                    data = c.recv(100)
                    c.sendall(self.host.encode() + b" " + data)
                except OSError:
                    pass

    def close(self):
        self.sock.close()


@pytest.mark.skipif(not shutil.which("unshare"), reason="unshare (util-linux) is needed")
@pytest.mark.deadline(60)
@pytest.mark.parametrize("allowed,other", [("127.0.0.1", "127.0.0.2"), ("127.0.0.2", "127.0.0.1")])
def test_a_name_allowed_by_an_address_rule_connects_exactly_that_address(adit, allowed, other):
    """docs/operations.md: a name that no name pattern allows is resolved once, its address checked against the
    address patterns, and exactly that address is connected. The name here has two addresses, one allowed; the
    same port listens on both. The stream may go to the allowed address or be denied, never to the other."""
    port = H.free_port()
    lis = {h: Listener(h, port) for h in ("127.0.0.1", "127.0.0.2")}
    try:
        server = server_with_hosts(adit, f"127.0.0.2 twin.adit-e2e.test\n127.0.0.1 twin.adit-e2e.test\n"
                                         f"127.0.0.1 localhost\n", [f"{allowed}:{port}"])
        local = H.free_port()
        client = adit.client(server.url, [(local, "twin.adit-e2e.test", port)])
        outcomes = []
        for i in range(4):
            try:
                with H.connect_local(local, timeout=10) as s:
                    s.settimeout(10 * SCALE)
                    s.sendall(b"hi %d" % i)
                    outcomes.append(s.recv(100).decode())
            except OSError as e:
                outcomes.append(f"refused: {e!r}")
        assert lis[other].accepted == 0, (f"the server connected {other}, which no rule allows "
                                          f"(outcomes {outcomes}); server log:\n{server.log_tail()}")
        reached = [o for o in outcomes if o.startswith(allowed)]
        print(f"allowed {allowed}: {outcomes}")
        assert reached or client.log_lines_matching("not allowed by policy"), outcomes
    finally:
        for lst in lis.values():
            lst.close()


@pytest.mark.deadline(30)
def test_a_name_is_allowed_by_the_address_it_resolves_to(adit, targets):
    """`localhost` matches no name pattern; it resolves to 127.0.0.1, which the address rule allows."""
    echo = targets.echo()
    t = adit.tunnel([], allow=[f"127.0.0.1:{echo.port}"], extra_forwards=[("localhost", echo.port)])
    with H.connect_local(t.ports[0]) as s:
        s.settimeout(10 * SCALE)
        s.sendall(b"by address")
        assert H.recv_exactly(s, 10) == b"by address"
    denied = adit.tunnel([], allow=[f"127.0.0.2:{echo.port}"], extra_forwards=[("localhost", echo.port)])
    assert H.refused_locally(denied.ports[0], timeout=10) == ("reset", b"")
    assert denied.client.wait_for_log("not allowed by policy", timeout=5)


# ---------------------------------------------------------------------------------------------------------
# --window

def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {ln.rsplit(" ", 1)[0]: float(ln.rsplit(" ", 1)[1]) for ln in body.splitlines()
            if ln and not ln.startswith("#")}


def socket_queues(port: int) -> int:
    """Recv-Q + Send-Q of every established TCP socket with `port` at either end (`ss`)."""
    out = subprocess.run(["ss", "-tnH", "state", "established", f"( dport = :{port} or sport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    return sum(int(f[0]) + int(f[1]) for f in (ln.split() for ln in out.splitlines()) if len(f) >= 2)


@pytest.mark.skipif(not shutil.which("ss"), reason="ss (iproute2) is needed")
@pytest.mark.deadline(60)
def test_window_bounds_what_a_stalled_stream_holds(adit, targets):
    """A target that never reads: the client may send the server at most --window beyond what the server has
    written into the target's socket. Held in the server = bytes the client sent (its metrics) - the kernel
    queues between the server and the target (ss). `--window 256K` fixes the window (it is also where every
    window starts, and a stalled stream's never grows: it consumes nothing)."""
    window = 256 * KiB
    stall = threading.Event()
    sink = targets.custom("stalled", lambda conn, srv: stall.wait(60), rcvbuf=64 * KiB)
    metrics = H.free_port()
    server = adit.server([f"127.0.0.1:{sink.port}"], extra=["--window", "256K"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", sink.port)],
                         extra=["--window", "256K", "--metrics", f"127.0.0.1:{metrics}"])
    H.wait_for_port(metrics, timeout=10, connect=False)
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
    s.connect(("127.0.0.1", local))
    s.setblocking(False)
    try:
        sent, last, chunk = 0, time.monotonic(), b"w" * 65536
        while time.monotonic() - last < 2 * SCALE:   # until nothing more is taken for 2 s
            try:
                sent += s.send(chunk)
                last = time.monotonic()
            except BlockingIOError:
                time.sleep(0.01)
            assert sent < 256 * MiB, "the stalled stream never stalled"

        def held():
            return scrape(metrics).get('adit_stream_bytes_total{direction="sent"}', 0) - socket_queues(sink.port)
        # metrics are published once a second: wait until two readings agree
        readings = [held()]
        H.wait_until(lambda: readings.append(held()) or (readings[-1] == readings[-2] and readings[-1] > 0),
                     15 * SCALE, interval=1.2, what="a steady reading")
        in_server = readings[-1]
        print(f"app sent {sent} B; held in the server {in_server:.0f} B with --window 256K")
        assert in_server <= window + 16 * KiB, f"the server holds {in_server:.0f} B of a stalled stream, window 256K"
        assert in_server >= window / 4, f"only {in_server:.0f} B in flight: the measurement sees nothing"
    finally:
        stall.set()
        s.close()


@pytest.mark.deadline(30)
def test_window_is_announced_in_hello_and_enforced(adit, targets):
    """On the wire: the server's HELLO carries --window, and a DATA frame above that credit is reset with code 7
    (flow-control error) while one of exactly the window is accepted."""
    release = threading.Event()
    sink = targets.custom("sink", lambda conn, srv: release.wait(30))
    server = adit.server([f"127.0.0.1:{sink.port}"], extra=["--window", "96K"])
    s = H.RawSession(server.url)
    try:
        _, window, _, _ = H.server_hello(s)
        assert window == 96 * KiB, f"HELLO announces a window of {window}, --window 96K"
        s.send(H.mux_hello())
        target = H.mux_ipv4_target("127.0.0.1", sink.port)
        s.send(H.mux_frame(H.MUX_OPEN, 1, target), H.mux_frame(H.MUX_DATA, 1, b"e" * window))
        s.send(H.mux_frame(H.MUX_OPEN, 3, target), H.mux_frame(H.MUX_DATA, 3, b"f" * (window + 1)))
        s.send(H.mux_frame(H.MUX_PING, 0, b"barrier!"))
        seen = []
        while (H.MUX_PONG, 0, 0, b"barrier!") not in seen or not [f for f in seen if f[0] == H.MUX_RESET]:
            seen.append(s.next_frame())
        resets = {f[2]: f[3] for f in seen if f[0] == H.MUX_RESET}
        assert 1 not in resets, f"a DATA frame of exactly the window was refused: {resets[1]!r}"
        assert 3 in resets and resets[3][0] == 7, f"a DATA frame above the window was not reset with 7: {seen}"
    finally:
        release.set()
        s.close()


# ---------------------------------------------------------------------------------------------------------
# --threads, --tunnel-buffer

def event_loop_threads(pid: int) -> list[str]:
    names = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            pass
    return sorted(n for n in names if n.startswith("NIO-ELT"))


@pytest.mark.deadline(30)
@pytest.mark.parametrize("threads", [1, 3])
def test_threads_sets_the_number_of_event_loops(adit, targets, threads):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--threads", str(threads)])
    # tunnels spread over the loops: open a few, so that every loop has had work
    for _ in range(threads):
        local = H.free_port()
        c = adit.client(server.url, [(local, "127.0.0.1", echo.port)])
        H.wait_tunnel_ready(local, timeout=15, proc=c)
    loops = event_loop_threads(server.pid)
    assert len(loops) == threads, f"--threads {threads}: the server runs event-loop threads {loops}"


def tunnel_socket_buffers(port: int) -> dict[str, tuple[int, int]]:
    """{"server": (rb, tb), "client": (rb, tb)} of the established tunnel connection to `port` (ss -tm)."""
    out = subprocess.run(["ss", "-tmnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
                         capture_output=True, text=True, timeout=10).stdout
    found = {}
    lines = out.splitlines()
    for i, ln in enumerate(lines):
        f = ln.split()
        if len(f) >= 4 and ":" in f[2]:
            local_port = int(f[2].rsplit(":", 1)[1])
            mem = " ".join(lines[i + 1:i + 2]) if "skmem" not in ln else ln
            m = re.search(r"rb(\d+),t\d+,tb(\d+)", mem)
            if m:
                found["server" if local_port == port else "client"] = (int(m.group(1)), int(m.group(2)))
    return found


@pytest.mark.skipif(not shutil.which("ss"), reason="ss (iproute2) is needed")
@pytest.mark.deadline(30)
def test_tunnel_buffer_sets_the_tunnel_sockets_buffers(adit, targets):
    """SO_RCVBUF/SO_SNDBUF of the tunnel connection, on each side; Linux reports twice the value set."""
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--tunnel-buffer", "100K"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=["--tunnel-buffer", "150K"])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    bufs = tunnel_socket_buffers(server.port)
    assert bufs.get("server") == (2 * 100 * KiB, 2 * 100 * KiB), bufs
    assert bufs.get("client") == (2 * 150 * KiB, 2 * 150 * KiB), bufs
    # auto (the default): the kernel's own sizes, not these
    auto = adit.server([f"127.0.0.1:{echo.port}"])
    local2 = H.free_port()
    c2 = adit.client(auto.url, [(local2, "127.0.0.1", echo.port)])
    H.wait_tunnel_ready(local2, timeout=15, proc=c2)
    bufs = tunnel_socket_buffers(auto.port)
    assert set(bufs) == {"server", "client"} and bufs["server"][0] not in (2 * 100 * KiB, 2 * 150 * KiB), bufs


# ---------------------------------------------------------------------------------------------------------
# Exit code 1 for an address in use; adit demo

@pytest.mark.deadline(30)
@pytest.mark.parametrize("how", ["server --listen", "client -L", "client -D", "client --http-proxy"])
def test_an_address_in_use_exits_1(adit, how):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        if how == "server --listen":
            proc = adit.server(["127.0.0.1:9"], port=port, wait=False)
        else:
            flag = how.split()[1]
            spec = f"127.0.0.1:{port}:127.0.0.1:9" if flag == "-L" else f"127.0.0.1:{port}"
            proc = adit._start("client", [f"ws://127.0.0.1:{H.free_port()}/", flag, spec])
        H.wait_until(lambda: proc.poll() is not None, 10, what=f"adit {how} to exit")
        assert proc.returncode == 1, f"exit code {proc.returncode}, expected 1; log:\n{proc.log_tail()}"
        assert proc.log_lines_matching(f"127.0.0.1:{port}") and proc.log_lines_matching("already in use"), \
            proc.log_tail()
    finally:
        taken.close()


@pytest.mark.deadline(60)
def test_demo_pushes_and_verifies(adit_bin):
    """What `make demo` runs after its build: the demo subcommand (here with less data)."""
    p = subprocess.run([str(adit_bin), "demo", "--streams", "2", "--megabytes", "64"], capture_output=True,
                       text=True, timeout=50 * SCALE, env=H._child_env())
    assert p.returncode == 0, p.stdout + p.stderr
    assert "pushing 64 MiB each way over 2 streams of one tunnel" in p.stdout, p.stdout
    m = re.search(r"^done: 64 MiB each way in [\d.]+ s .* ([\d.]+) MiB/s each way .*every byte verified$", p.stdout,
                  re.M)
    assert m, p.stdout
    assert float(m.group(1)) > 0
    assert "adit server --listen" in p.stdout and "adit client ws://" in p.stdout
