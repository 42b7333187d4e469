"""Fronts suite of the Adit benchmark (BENCH_ONLY=fronts), called from
bench/run.py; see docs/benchmarks.md.

adit's other ways in besides -L, each beside its OpenSSH counterpart or the
direct path, in one run:
  -R   reverse forward: the adit server listens (--allow-reverse) and carries
       each connection back to a target on the client's side; baseline
       `ssh -R` to the harness's private sshd
  -D   SOCKS5 proxy on the client; baseline `ssh -D`
  UDP  -L PORT:HOST:HOSTPORT/udp (one flow per local sender); baseline direct
       (ssh forwards no UDP)
One adit client (default flags, plus ADIT_CLIENT_ARGS) and one ssh client
carry all of their forwards, so every variant of a path shares its tunnel /
SSH connection, as -L and -R would in real use. Targets: the harness's echo
server and iperf3 server, plus a UDP echo server (benchtool.py udpecho).

  throughput  iperf3, one stream (-t c.iperf_secs, 1 s omitted), through
              adit -R, ssh -R, and adit -L / ssh -L for reference;
              c.fronts_rounds rounds, the paths taking turns (the order
              rotating each round); median round reported, with the range
              and relay CPU (adit client + server, ssh + the sshd tree, from
              /proc/PID/stat). Before each iperf3 run (TCP and UDP) the
              harness waits, at most 5 s, until the iperf3 server holds no
              open connection: a client can exit while the server still
              tears its test down through a tunnel, and the next test was
              then refused as "busy" or reset.
  connect     connect + first byte (benchtool.py connect) through direct,
              adit -L, ssh -L, adit -R, ssh -R, adit -D, ssh -D: c.connect_n
              sequential connections per path, round-robin over the paths in
              c.rounds rounds, p50/p99. Through -D the client does what curl
              does: greeting (no auth), wait for the method, CONNECT to the
              echo server's IPv4 address, wait for the reply, then the byte
              and its echo; all of it is timed.
  udp_rr      UDP request/response (benchtool.py udpping): 64-byte datagrams,
              one outstanding at a time, to the UDP echo server, direct and
              through adit -L …/udp; c.pingpong_n round trips in c.rounds
              rounds, p50/p99 and lost replies (1 s timeout)
  udp_iperf   iperf3 -u -b c.udp_rate -l c.udp_len through adit -L …/udp and
              direct, c.fronts_rounds rounds (-t c.udp_secs, nothing omitted,
              so a flow's start counts): loss = iperf3's lost/total datagrams
              as its server counted them, received Mbit/s, relay CPU, and
              where datagrams were dropped: the drops counter of the adit
              client's UDP socket (/proc/net/udp: its receive buffer was
              full), the system's Udp RcvbufErrors (/proc/net/snmp), and
              inside adit (adit_datagrams_dropped_total, client + server,
              from --metrics; scraped when each round starts, the previous
              round of that tunnel being over for seconds by then, and
              METRICS_LAG after the last).
              iperf3 -u puts the same random block in every datagram (only
              the header changes; 3.12's -F, which would vary it, crashes
              with -u), so its payload compresses ~70× and adit's default
              compression (auto) deflates every datagram. The UDP test
              therefore also runs through a second adit tunnel with
              `--compression off` on both sides: what incompressible
              datagrams (QUIC, WireGuard, DTLS) cost, as auto leaves those
              uncompressed after probing.
              `-w 1M` gives both iperf3 sockets a 1 MiB buffer: with the
              default 208 KiB the iperf3 server's own socket overflows and
              drops ~1 % of 1400-byte datagrams at 500 Mbit/s on this VM even
              with no tunnel, which would be charged to the path.

iperf3 -u and its control connection: the iperf3 client opens a TCP control
connection to -p PORT, then sends its test datagrams over UDP to the same
PORT (first a 4-byte hello that the server answers, which tells the server
the flow's source address; the server then connect()s its UDP socket to it).
So the adit client forwards one port number twice, `-L P:127.0.0.1:IPERF`
and `-L P:127.0.0.1:IPERF/udp` (TCP and UDP ports are separate name spaces),
and `iperf3 -c 127.0.0.1 -p P -u` finds both through the tunnel. (--cport
would only pin the client's source port; it does not help here.)
Each UDP path has an iperf3 server of its own: the control connection and
the datagrams are separate streams of the tunnel, so datagrams still queued
in a tunnel when its test ends reach the server after the test's end, where
the next test's server takes the first datagram it gets for its client's
hello; through a shared server the next path's iperf3 client then waited for
an answer that went elsewhere (iperf3 3.12 waits without a timeout).
"""

import json
import socket
import subprocess
import time

from compression import METRICS_LAG, scrape

H = None   # bench/run.py as a module (log, free_port, wait_port, tput_summary, ...)

# throughput paths and connect paths, in table order
TPUT = ("adit_L", "ssh_L", "adit_R", "ssh_R")
CONN = ("direct", "adit_L", "ssh_L", "adit_R", "ssh_R", "adit_D", "ssh_D")
COLS = CONN
LABEL = {"direct": "direct", "adit_L": "adit -L", "ssh_L": "ssh -L", "adit_R": "adit -R",
         "ssh_R": "ssh -R", "adit_D": "adit -D", "ssh_D": "ssh -D"}
UDP = ("direct", "adit")                  # request/response
UDP_IPERF = ("direct", "adit", "adit_off")  # iperf3 -u
ULABEL = {"direct": "direct", "adit": "adit -L …/udp", "adit_off": "adit -L …/udp, `--compression off`"}


# --------------------------------------------------------------------------
# helpers


def listening(port, proto="tcp"):
    """Is something bound to 127.0.0.1:port (TCP: in LISTEN state), per
    /proc/net/{tcp,udp}? Checks without connecting (a probe connection to an
    iperf3 server would be taken for a test)."""
    want = "0100007F:%04X" % port
    try:
        with open("/proc/net/" + proto) as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want and (proto == "udp" or parts[3] == "0A"):
                    return True
    except (OSError, StopIteration, IndexError):
        pass
    return False


def wait_listening(port, proto, timeout, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.poll() is not None for p in procs):
            return False
        if listening(port, proto):
            return True
        time.sleep(0.05)
    return False


BUSY_STATES = {"01", "02", "03", "08", "09"}   # ESTABLISHED, SYN_SENT, SYN_RECV, CLOSE_WAIT, LAST_ACK


def wait_idle(port, timeout=5.0):
    """Wait until no TCP connection to the iperf3 server on 127.0.0.1:port is
    open any more (its previous test is over on its side too: the client
    can exit while the server still tears the test down through a tunnel,
    and the next test would be told "the server is busy"). Seconds waited."""
    want = "0100007F:%04X" % port
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        busy = False
        try:
            with open("/proc/net/tcp") as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if parts[1] == want and parts[3] in BUSY_STATES:
                        busy = True
                        break
        except (OSError, StopIteration, IndexError):
            return None
        if not busy:
            break
        time.sleep(0.02)
    return time.monotonic() - t0


def free_port_both():
    """A port free for TCP (H.free_port checks that) and for UDP."""
    for _ in range(50):
        port = H.free_port()
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((H.HOST, port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no port free for both TCP and UDP")


def udp_drops(port):
    """Sum of the drops counters of the UDP sockets bound to 127.0.0.1:port."""
    want = "0100007F:%04X" % port
    n = 0
    try:
        with open("/proc/net/udp") as f:
            next(f)
            for line in f:
                parts = line.split()
                if parts[1] == want:
                    n += int(parts[-1])
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return n


def udp_rcvbuf_errors():
    """The system's Udp RcvbufErrors (/proc/net/snmp)."""
    try:
        with open("/proc/net/snmp") as f:
            rows = [line.split() for line in f if line.startswith("Udp:")]
        return int(rows[1][rows[0].index("RcvbufErrors")])
    except (OSError, IndexError, ValueError):
        return None


class IperfServer:
    """An iperf3 server of one UDP path."""

    def __init__(self, bench, name):
        self.bench, self.name = bench, name
        self.port = free_port_both()
        self.argv = ["iperf3", "-s", "-B", H.HOST, "-p", str(self.port)]
        self.proc = None

    def start(self):
        self.proc = self.bench.procs.start("iperf3-udp-" + self.name, self.argv, stdout=subprocess.DEVNULL)
        # no probe connection: iperf3 would take it for a client
        if not wait_listening(self.port, "tcp", 5, [self.proc]):
            raise RuntimeError("iperf3 server for %s did not start: %s" % (
                self.name, self.bench.procs.log_tail("iperf3-udp-" + self.name)))

    def restart(self):
        self.stop()
        try:
            self.start()
        except RuntimeError as e:
            H.log("  " + str(e))

    def stop(self):
        if self.proc is not None:
            self.bench.procs.stop(self.proc)
            self.proc = None


M_DROPPED = "adit_datagrams_dropped_total"


def adit_dropped(path):
    """adit_datagrams_dropped_total of the path's client + server, or None
    (no --metrics, or a binary without the counter)."""
    ports = getattr(path, "metrics", None)
    if not ports:
        return None
    vals = [scrape(p) for p in ports]
    if any(v is None or M_DROPPED not in v for v in vals):
        return None
    return sum(v[M_DROPPED] for v in vals)


def variant(base, name, ports):
    """A view of a started path (its processes, for relay CPU) under another
    name and other local ports."""
    v = H.Path(name)
    v.ports = dict(ports)
    v.procs = base.procs
    v.client_pids, v.server_pids, v.relay_pids = base.client_pids, base.server_pids, base.relay_pids
    return v


def median(vals):
    v = sorted(x for x in vals if x is not None)
    return v[(len(v) - 1) // 2] if v else None


# --------------------------------------------------------------------------
# iperf3 -u


def run_iperf_udp(bench, path, port, server):
    c = bench.cfg
    argv = ["iperf3", "-c", H.HOST, "-p", str(port), "-u", "-b", c.udp_rate, "-l", str(c.udp_len),
            "-w", "1M", "-t", str(c.udp_secs), "-J", "--connect-timeout", "3000"]
    idle_wait = wait_idle(server.port)
    cpu0 = H.tree_cpu_secs(path.relay_pids) if path.relay_pids else None
    ccpu0 = H.tree_cpu_secs(path.client_pids) if path.client_pids else None
    # the adit client's UDP socket (the -L …/udp listener) is the first hop
    drops0 = udp_drops(port) if path.relay_pids else None
    rcvbuf0 = udp_rcvbuf_errors()
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=c.udp_secs + 15)
        res = parse_iperf_udp(r.stdout, r.stderr)
    except subprocess.TimeoutExpired:
        res = {"error": "iperf3 timed out"}
    wall = time.monotonic() - t0
    if cpu0 is not None:
        res["relay_cpu_pct"] = 100.0 * (H.tree_cpu_secs(path.relay_pids) - cpu0) / wall
    if ccpu0 is not None:
        res["client_cpu_pct"] = 100.0 * (H.tree_cpu_secs(path.client_pids) - ccpu0) / wall
    if drops0 is not None and udp_drops(port) is not None:
        res["adit_client_socket_drops"] = udp_drops(port) - drops0
    if rcvbuf0 is not None and udp_rcvbuf_errors() is not None:
        res["system_rcvbuf_errors"] = udp_rcvbuf_errors() - rcvbuf0
    res["command"] = " ".join(argv)
    res["server_idle_wait_secs"] = idle_wait
    if "error" in res:
        H.log("  iperf3 -u error on %s: %s; restarting its iperf3 server" % (path.name, res["error"]))
        server.restart()
    return res


def parse_iperf_udp(out, err=""):
    try:
        j = json.loads(out)
    except ValueError:
        return {"error": "iperf3 output not JSON: %s" % (err or out)[-300:]}
    if j.get("error"):
        return {"error": j["error"]}
    end = j.get("end", {})
    rcv = end.get("sum_received") or end.get("sum") or {}
    snd = end.get("sum_sent") or {}
    if not rcv.get("packets"):
        return {"error": "iperf3 -u: no datagram counts in its report"}
    return {"mbps": rcv.get("bits_per_second", 0) / 1e6,
            "sent_mbps": snd.get("bits_per_second", 0) / 1e6,
            "lost": rcv.get("lost_packets"), "packets": rcv.get("packets"),
            "loss_pct": rcv.get("lost_percent"), "jitter_ms": rcv.get("jitter_ms"),
            "blksize": j.get("start", {}).get("test_start", {}).get("blksize")}


def udp_summary(rs):
    """The median round by loss (the upper one of an even count: the worse,
    as tput_summary takes the lower throughput), with every round's loss and
    rate."""
    good = sorted((r for r in rs if r.get("loss_pct") is not None), key=lambda r: r["loss_pct"])
    if not good:
        return {"error": (rs[0].get("error") if rs else "skipped: time budget")}
    med = dict(good[len(good) // 2])
    med["rounds_loss_pct"] = [round(r["loss_pct"], 3) if "loss_pct" in r else None for r in rs]
    med["rounds_mbps"] = [round(r["mbps"], 1) if "mbps" in r else None for r in rs]
    med["rounds_relay_cpu_pct"] = [round(r["relay_cpu_pct"], 1) for r in rs if "relay_cpu_pct" in r]
    med["lost_total"] = sum(r["lost"] for r in good)
    for k in ("adit_client_socket_drops", "system_rcvbuf_errors", "adit_internal_drops"):
        if all(k in r for r in good):
            med[k + "_total"] = sum(r[k] for r in good)
    med["packets_total"] = sum(r["packets"] for r in good)
    med["loss_pct_pooled"] = 100.0 * med["lost_total"] / max(1, med["packets_total"])
    med["mbps_median"] = median(r["mbps"] for r in good)
    med["errors"] = len(rs) - len(good)
    return med


def udp_fmt(r):
    if "error" in r:
        return r["error"]
    s = "%.1f Mbit/s, lost %d of %d (%.3f %%)" % (r["mbps"], r["lost"], r["packets"], r["loss_pct"])
    if "relay_cpu_pct" in r:
        s += ", relay CPU %.0f%%" % r["relay_cpu_pct"]
        if "client_cpu_pct" in r:
            s += " (client %.0f%%)" % r["client_cpu_pct"]
    if "adit_client_socket_drops" in r:
        s += ", %d dropped at the adit client's socket" % r["adit_client_socket_drops"]
    if "system_rcvbuf_errors" in r:
        s += " (system RcvbufErrors +%d)" % r["system_rcvbuf_errors"]
    return s


def tput_fmt(r):
    s = H.fmt_gbps(r)
    if "relay_cpu_pct" in r:
        s += ", relay CPU %.0f%%" % r["relay_cpu_pct"]
    return s


# --------------------------------------------------------------------------
# the suite


def start_paths(bench, res, udp_echo, udp_iperf):
    """adit (server allowing UDP and reverse binds on loopback) and ssh, each one
    client with all forwards. Returns {variant name: Path}, {name: started Path}."""
    c = bench.cfg
    T = bench.targets()
    variants, started = {}, {}
    if "direct" in c.paths:
        variants["direct"] = variant(H.Path("direct"), "direct",
                                     {"echo": T["echo"], "iperf": T["iperf"], "udp_echo": udp_echo,
                                      "udp_iperf": udp_iperf["direct"].port})
    # adit: -L (the path's own, to echo and iperf3), -R to both, -D, and UDP
    r_echo, r_iperf, d_port = H.free_port(), H.free_port(), H.free_port()
    u_echo, u_iperf = free_port_both(), free_port_both()
    h = H.HOST
    server_args = ["--allow", "%s:*/udp" % h, "--allow-reverse", "%s:*" % h]
    m_cli, m_srv = H.free_port(), H.free_port()
    client_args = ["--metrics", "%s:%d" % (h, m_cli),
                   "-R", "%s:%d:%s:%d" % (h, r_echo, h, T["echo"]),
                   "-R", "%s:%d:%s:%d" % (h, r_iperf, h, T["iperf"]),
                   "-D", "%s:%d" % (h, d_port),
                   "-L", "%s:%d:%s:%d/udp" % (h, u_echo, h, udp_echo),
                   # iperf3 -u: its TCP control connection and its UDP data, one port number
                   "-L", "%s:%d:%s:%d" % (h, u_iperf, h, udp_iperf["adit"].port),
                   "-L", "%s:%d:%s:%d/udp" % (h, u_iperf, h, udp_iperf["adit"].port)]
    try:
        p = bench.start_path("adit", tag="-fronts", client_args=client_args,
                             server_args=server_args + ["--metrics", "%s:%d" % (h, m_srv)])
        started["adit"] = p
        if not H.wait_echo(r_echo, 15, p.procs):
            raise RuntimeError("no echo through -R port %d: %s" % (
                r_echo, bench.procs.log_tail("adit-client-fronts", 5)))
        for port, proto, what in ((r_iperf, "tcp", "-R"), (d_port, "tcp", "-D"),
                                  (u_echo, "udp", "-L …/udp"), (u_iperf, "tcp", "-L"),
                                  (u_iperf, "udp", "-L …/udp")):
            if not wait_listening(port, proto, 10, p.procs):
                raise RuntimeError("nothing listens on %s %d (%s)" % (proto, port, what))
        bench.commands["fronts: adit"] = p.commands
        variants["adit_L"] = variant(p, "adit_L", p.ports)
        variants["adit_R"] = variant(p, "adit_R", {"echo": r_echo, "iperf": r_iperf})
        variants["adit_D"] = variant(p, "adit_D", {"socks": d_port})
        variants["adit"] = variant(p, "adit", {"udp_echo": u_echo, "udp_iperf": u_iperf})
        variants["adit"].metrics = (m_cli, m_srv)
        H.log("  fronts path adit ready: -L %s, -R echo %d iperf %d, -D %d, udp echo %d iperf %d" % (
            p.ports, r_echo, r_iperf, d_port, u_echo, u_iperf))
    except Exception as e:
        res["errors"]["adit"] = "%s: %s" % (type(e).__name__, e)
        bench.notes.append("fronts: adit failed to start: %s" % e)
        bench.failed = True
        H.log("  fronts: adit failed to start: %s" % e)
    # a second adit tunnel, --compression off, for iperf3 -u only (see the docstring)
    u_iperf = free_port_both()
    off = ["--compression", "off"]
    m_cli, m_srv = H.free_port(), H.free_port()
    try:
        p = bench.start_path("adit", tag="-fronts-off",
                             server_args=server_args[:2] + off + ["--metrics", "%s:%d" % (h, m_srv)],
                             client_args=["-L", "%s:%d:%s:%d" % (h, u_iperf, h, udp_iperf["adit_off"].port),
                                          "-L", "%s:%d:%s:%d/udp" % (h, u_iperf, h, udp_iperf["adit_off"].port),
                                          "--metrics", "%s:%d" % (h, m_cli)] + off)
        started["adit_off"] = p
        for proto in ("tcp", "udp"):
            if not wait_listening(u_iperf, proto, 10, p.procs):
                raise RuntimeError("nothing listens on %s %d (-L)" % (proto, u_iperf))
        bench.commands["fronts: adit --compression off"] = p.commands
        variants["adit_off"] = variant(p, "adit_off", {"udp_iperf": u_iperf})
        variants["adit_off"].metrics = (m_cli, m_srv)
        H.log("  fronts path adit_off ready: udp iperf %d" % u_iperf)
    except Exception as e:
        res["errors"]["adit_off"] = "%s: %s" % (type(e).__name__, e)
        bench.notes.append("fronts: adit --compression off failed to start: %s" % e)
        bench.failed = True
        H.log("  fronts: adit --compression off failed to start: %s" % e)
    if "ssh" in c.paths:
        r_echo, r_iperf, d_port = H.free_port(), H.free_port(), H.free_port()
        client_args = ["-R", "%s:%d:%s:%d" % (h, r_echo, h, T["echo"]),
                       "-R", "%s:%d:%s:%d" % (h, r_iperf, h, T["iperf"]),
                       "-D", "%s:%d" % (h, d_port)]
        try:
            p = bench.start_path("ssh", tag="-fronts", client_args=client_args)
            started["ssh"] = p
            if not H.wait_echo(r_echo, 15, p.procs):
                raise RuntimeError("no echo through -R port %d: %s" % (
                    r_echo, bench.procs.log_tail("ssh-fronts", 5)))
            for port, what in ((r_iperf, "-R"), (d_port, "-D")):
                if not wait_listening(port, "tcp", 10, p.procs):
                    raise RuntimeError("nothing listens on tcp %d (%s)" % (port, what))
            bench.commands["fronts: ssh"] = p.commands
            variants["ssh_L"] = variant(p, "ssh_L", p.ports)
            variants["ssh_R"] = variant(p, "ssh_R", {"echo": r_echo, "iperf": r_iperf})
            variants["ssh_D"] = variant(p, "ssh_D", {"socks": d_port})
            H.log("  fronts path ssh ready: -L %s, -R echo %d iperf %d, -D %d" % (
                p.ports, r_echo, r_iperf, d_port))
        except Exception as e:
            res["errors"]["ssh"] = "%s: %s" % (type(e).__name__, e)
            bench.notes.append("fronts: ssh failed to start: %s" % e)
            bench.failed = True
            H.log("  fronts: ssh failed to start: %s" % e)
    return variants, started


def suite_fronts(bench, run_module):
    global H
    H = run_module
    c = bench.cfg
    res = bench.results["fronts"]
    if "adit" not in c.paths:
        res["skipped"] = "adit not in BENCH_PATHS"
        return
    if not c.adit_available:
        res["skipped"] = "adit binary missing"
        return
    res["params"] = {"rounds": c.fronts_rounds, "iperf_secs": c.iperf_secs, "iperf_omit_secs": 1,
                     "connect_n": c.connect_n, "connect_rounds": c.rounds,
                     "udp_rr_n": c.pingpong_n, "udp_rr_size": 64, "udp_rr_timeout_secs": 1.0,
                     "udp_rate": c.udp_rate, "udp_len": c.udp_len, "udp_secs": c.udp_secs,
                     "udp_iperf_socket_buffer": "1M (iperf3 -w, both ends)",
                     "adit": "default flags (compression auto) + ADIT_*_ARGS",
                     "socks": "SOCKS5, no auth, CONNECT to an IPv4 address, as curl does"}
    res["errors"] = {}
    if not getattr(bench, "echo_port", None):
        bench.start_targets()
    ue = bench.procs.start("udp-echo", [bench.py, H.TOOL, "udpecho"], stdout=subprocess.PIPE)
    line = ue.stdout.readline().strip()
    if not line:
        raise RuntimeError("UDP echo server did not start: " + bench.procs.log_tail("udp-echo"))
    udp_echo = int(line)
    bench.commands["fronts: UDP echo server"] = "python3 bench/benchtool.py udpecho"
    started = {}
    udp_iperf = {k: IperfServer(bench, k) for k in UDP_IPERF if k != "direct" or "direct" in c.paths}
    try:
        for k, srv in udp_iperf.items():
            srv.start()
            bench.commands["fronts: iperf3 server (UDP, %s)" % k] = " ".join(srv.argv)
        V, started = start_paths(bench, res, udp_echo, udp_iperf)

        # 1. single-stream throughput, -R and -L, the paths taking turns
        keys = [k for k in TPUT if k in V]
        runs = {k: [] for k in keys}
        res["throughput"] = {}
        for rnd in range(c.fronts_rounds):
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)] if keys else []
            for k in order:
                if bench.remaining() < c.iperf_secs + 25:
                    continue
                waited = wait_idle(bench.iperf_port)
                r = bench.run_iperf(V[k], c.iperf_secs)
                r["round"] = rnd + 1
                r["server_idle_wait_secs"] = waited
                runs[k].append(r)
                res["throughput"][k] = H.tput_summary(runs[k])
                H.log("  fronts throughput %-7s round %d: %s" % (k, rnd + 1, tput_fmt(r)))
        for k in keys:
            res["throughput"][k] = H.tput_summary(runs[k])

        # 2. connect + first byte: direct, -L, -R, -D (SOCKS5 handshake in the timing)
        cpaths = {k: V[k] for k in CONN if k in V}
        res["connect"] = {}

        def conn_argv(path, n):
            if "socks" in path.ports:
                return ["connect", "--port", str(path.ports["socks"]), "--count", str(n),
                        "--socks", "%s:%d" % (H.HOST, bench.echo_port)]
            return ["connect", "--port", str(path.ports["echo"]), "--count", str(n)]
        if bench.remaining() < 20:
            res["connect"] = {k: {"error": "skipped: time budget"} for k in cpaths}
            bench.notes.append("fronts: connect + first byte skipped: time budget")
        elif cpaths:
            bench.rounds("fronts-conn", cpaths, conn_argv, c.connect_n, c.loop_limit,
                         out=res["connect"])

        # 3. UDP request/response, one outstanding
        upaths = {k: V[k] for k in UDP if k in V}
        res["udp_rr"] = {}
        if bench.remaining() < 20:
            res["udp_rr"] = {k: {"error": "skipped: time budget"} for k in upaths}
            bench.notes.append("fronts: UDP request/response skipped: time budget")
        elif upaths:
            bench.rounds("fronts-udp", upaths,
                         lambda path, n: ["udpping", "--port", str(path.ports["udp_echo"]),
                                          "--count", str(n), "--size", "64"],
                         c.pingpong_n, c.loop_limit, out=res["udp_rr"])

        # 4. iperf3 -u at c.udp_rate, the paths taking turns
        ukeys = [k for k in UDP_IPERF if k in V]
        uruns = {k: [] for k in ukeys}
        res["udp_iperf"] = {}
        for rnd in range(c.fronts_rounds):
            order = ukeys[rnd % len(ukeys):] + ukeys[:rnd % len(ukeys)] if ukeys else []
            for k in order:
                if bench.remaining() < c.udp_secs + 25:
                    continue
                dropped0 = adit_dropped(V[k])
                r = run_iperf_udp(bench, V[k], V[k].ports["udp_iperf"], udp_iperf[k])
                r["round"] = rnd + 1
                r["adit_dropped_counter_at_start"] = dropped0
                uruns[k].append(r)
                res["udp_iperf"][k] = udp_summary(uruns[k])
                H.log("  fronts iperf3 -u %-6s round %d: %s" % (k, rnd + 1, udp_fmt(r)))
        # datagrams dropped inside adit, per round: counter at the next round's start (or at the end)
        if any(getattr(V[k], "metrics", None) for k in ukeys):
            time.sleep(METRICS_LAG)
        for k in ukeys:
            rs = uruns[k]
            marks = [r.get("adit_dropped_counter_at_start") for r in rs] + [adit_dropped(V[k])]
            for i, r in enumerate(rs):
                if marks[i] is not None and marks[i + 1] is not None:
                    r["adit_internal_drops"] = int(marks[i + 1] - marks[i])
            res["udp_iperf"][k] = udp_summary(rs)
    finally:
        for p in reversed(list(started.values())):
            bench.stop_path(p)
        for srv in udp_iperf.values():
            srv.stop()
        bench.procs.stop(ue)


# --------------------------------------------------------------------------
# report


def report(bench, cfg):
    """(markdown, [(target, value, vfmt, goal, ok)])"""
    R = bench.results.get("fronts") or {}
    rate = cfg.udp_rate

    def targets(tr, cr, loss, loss_off):
        return [("-R single-stream throughput adit / ssh -R", tr, "%.2f×", "≥ 1.3×", lambda x: x >= 1.3),
                ("-D connect + first byte p50 adit / ssh -D", cr, "%.2f×", "≤ 1×", lambda x: x <= 1.0),
                ("UDP loss, iperf3 -u %s bit/s through adit -L …/udp, default flags "
                 "(median round)" % rate, loss, "%.3f %%", "< 1 %", lambda x: x < 1.0),
                ("UDP loss, the same through adit `--compression off` (median round)", loss_off,
                 "%.3f %%", "< 1 %", lambda x: x < 1.0)]
    if not cfg.adit_available or "adit" not in cfg.paths:
        state = "pending" if "adit" in cfg.paths else "not run"
        return "Fronts: %s." % state, targets(None, None, None, None)
    if R.get("skipped"):
        return "Fronts: skipped (%s)." % R["skipped"], targets(None, None, None, None)
    T, C = R.get("throughput") or {}, R.get("connect") or {}
    U, UI, E = R.get("udp_rr") or {}, R.get("udp_iperf") or {}, R.get("errors") or {}

    def g(d, k, *ks):
        v = d.get(k)
        for x in ks:
            v = v.get(x) if isinstance(v, dict) else None
        return v

    def ratio(a, b):
        return None if a is None or not b else a / b

    def instance(k):
        """the started instance a column belongs to (its start-up error, if any, is in E)"""
        return k if k in ("adit_off", "direct") else k.split("_")[0]

    def cell(d, k, key, fmt):
        if instance(k) in E:
            return "failed"
        v = g(d, k, key)
        if v is None:
            err = g(d, k, "error")
            return "n/a" if k not in d else ("skipped" if err and "skipped" in err else
                                             "error" if err else "-")
        return fmt % v

    def spread(d, k, key, fmt):
        """min–max over the rounds that gave a value (failed rounds are counted apart)"""
        if k not in d:
            return "n/a"
        vals = [x for x in (g(d, k, key) or []) if x is not None]
        if key == "rounds_gbps":
            vals = [x for x in vals if x > 0]   # tput_summary lists a failed round as 0
        errs = g(d, k, "errors") or 0
        s = (fmt + "–" + fmt) % (min(vals), max(vals)) if vals else "-"
        return s + (" (%d failed)" % errs if errs else "")

    cols = [k for k in COLS if not k.startswith("ssh") or "ssh" in cfg.paths]
    cols = [k for k in cols if k != "direct" or "direct" in cfg.paths]
    rounds = cfg.fronts_rounds
    med = ", median of %d" % rounds if rounds > 1 else ""
    lines = ["| -R and -D, loopback | " + " | ".join(LABEL[k] for k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    rows = [
        ("Throughput, 1 stream (Gbit/s%s)" % med, lambda k: cell(T, k, "gbps", "%.2f")),
        ("  range over the rounds (Gbit/s)", lambda k: spread(T, k, "rounds_gbps", "%.2f")),
        ("Relay CPU during 1 stream (% of one core)", lambda k: cell(T, k, "relay_cpu_pct", "%.0f")),
        ("1 stream, Gbit/s per relay CPU core%s" % med, lambda k: cell(T, k, "gbps_per_relay_core", "%.2f")),
        ("Connect + first byte p50 (µs)", lambda k: cell(C, k, "p50_us", "%.0f")),
        ("Connect + first byte p99 (µs)", lambda k: cell(C, k, "p99_us", "%.0f")),
    ]
    for label, fn in rows:
        lines.append("| %s | %s |" % (label, " | ".join(fn(k) for k in cols)))
    lines += ["",
              "- -R: iperf3 client → adit server's listener → tunnel → adit client → iperf3 server "
              "(ssh -R: sshd → ssh). -D: the connect time includes the SOCKS5 greeting and CONNECT, each "
              "waited for; both answer CONNECT once the far side reached the target. Relay CPU: adit "
              "client + server; ssh + the sshd tree.",
              "- `ssh -N` marks its connection non-interactive and leaves Nagle on (TCP_NODELAY only for "
              "sessions with a tty), so a connection through ssh -R often waits for a delayed ACK "
              "(~40 ms); that, not the relays, is most of ssh -R's connect time."]

    ucols = [k for k in UDP_IPERF if k != "direct" or "direct" in cfg.paths]
    urounds = " (median of %d rounds)" % rounds if rounds > 1 else ""

    def lost_cell(k):
        if k not in UDP:
            return "n/a"
        if instance(k) in E:
            return "failed"
        n = g(U, k, "n")
        return "-" if n is None else "%d of %d" % (g(U, k, "lost") or 0, n + (g(U, k, "lost") or 0))

    def pooled(k, key):
        tot = g(UI, k, "packets_total")
        v = g(UI, k, key)
        return "-" if not tot or v is None else "%d of %d" % (v, tot)
    ul = ["| UDP, loopback | " + " | ".join(ULABEL[k] for k in ucols) + " |",
          "|---|" + "---:|" * len(ucols)]
    urows = [
        ("Request/response 64 B p50 (µs)", lambda k: cell(U, k, "p50_us", "%.0f")),
        ("Request/response 64 B p99 (µs)", lambda k: cell(U, k, "p99_us", "%.0f")),
        ("  replies lost", lost_cell),
        ("iperf3 -u %s bit/s, %d B datagrams: loss %%%s" % (rate, cfg.udp_len, urounds),
         lambda k: cell(UI, k, "loss_pct", "%.3f")),
        ("  range over the rounds (%)", lambda k: spread(UI, k, "rounds_loss_pct", "%.3f")),
        ("  lost datagrams, all rounds", lambda k: pooled(k, "lost_total")),
        ("  dropped at the adit client's UDP socket (its receive buffer full)",
         lambda k: "n/a" if k == "direct" else pooled(k, "adit_client_socket_drops_total")),
        ("  dropped inside adit (adit_datagrams_dropped_total, client + server)",
         lambda k: "n/a" if k == "direct" else pooled(k, "adit_internal_drops_total")),
        ("  received Mbit/s (median)", lambda k: cell(UI, k, "mbps_median", "%.1f")),
        ("  relay CPU (% of one core, median round): client + server", lambda k: "n/a" if k == "direct"
         else "failed" if instance(k) in E else "%s + %s" % (
             cell(UI, k, "client_cpu_pct", "%.0f"),
             "-" if g(UI, k, "relay_cpu_pct") is None or g(UI, k, "client_cpu_pct") is None
             else "%.0f" % (g(UI, k, "relay_cpu_pct") - g(UI, k, "client_cpu_pct")))),
    ]
    for label, fn in urows:
        ul.append("| %s | %s |" % (label, " | ".join(fn(k) for k in ucols)))
    ul += ["",
           "- iperf3 -u: `-w 1M` (1 MiB socket buffers at both iperf3 ends, so that the loss is the path's, "
           "not iperf3's own receive buffer's); its control connection goes through a TCP -L on the same "
           "port number. Its payload is one random block repeated in every datagram, so adit's default "
           "compression (auto) deflates every datagram; the `--compression off` tunnel shows what "
           "incompressible datagrams cost (auto skips those)."]
    info = []
    v = ratio(g(T, "adit_R", "gbps"), g(T, "adit_L", "gbps"))
    if v is not None:
        info.append("adit -R / -L throughput %.2f×" % v)
    v = ratio(g(T, "ssh_R", "gbps"), g(T, "ssh_L", "gbps"))
    if v is not None:
        info.append("ssh -R / -L %.2f×" % v)
    v = ratio(g(T, "adit_R", "gbps_per_relay_core"), g(T, "ssh_R", "gbps_per_relay_core"))
    if v is not None:
        info.append("-R per relay core adit / ssh %.2f×" % v)
    v = ratio(g(C, "adit_R", "p50_us"), g(C, "ssh_R", "p50_us"))
    if v is not None:
        info.append("-R connect p50 adit / ssh %.2f×" % v)
    v = ratio(g(C, "adit_D", "p50_us"), g(C, "adit_L", "p50_us"))
    if v is not None:
        info.append("adit connect p50 -D / -L %.2f×" % v)
    v = ratio(g(C, "ssh_D", "p50_us"), g(C, "ssh_L", "p50_us"))
    if v is not None:
        info.append("ssh -D / -L %.2f×" % v)
    v = ratio(g(U, "adit", "p50_us"), g(U, "direct", "p50_us"))
    if v is not None:
        info.append("UDP request/response p50 adit / direct %.2f×" % v)
    if info:
        ul += ["- " + "; ".join(info) + "."]
    for k, e in E.items():
        ul.append("- %s: %s" % (k, str(e)[:200]))
    md = "\n".join(lines) + "\n\n" + "\n".join(ul)
    return md, targets(ratio(g(T, "adit_R", "gbps"), g(T, "ssh_R", "gbps")),
                       ratio(g(C, "adit_D", "p50_us"), g(C, "ssh_D", "p50_us")),
                       g(UI, "adit", "loss_pct"), g(UI, "adit_off", "loss_pct"))
