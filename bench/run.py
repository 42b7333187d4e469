#!/usr/bin/env python3
"""Adit benchmark harness: direct TCP vs socat two-hop vs ssh -L vs adit,
all on 127.0.0.1, in one run. See docs/benchmarks.md.

Environment (all optional):
  BENCH_ONLY     comma list of suites: throughput,connect,pingpong,saturated,idle,
                 tls,compression,fronts (default: all)
  BENCH_PATHS    comma list of paths: direct,socat,ssh,adit (default: all;
                 adit is skipped, shown as "pending", if the binary is missing)
  BENCH_QUICK=1  short run (~1 min): shorter iperf3, fewer samples, 1,000 idle
  BENCH_IDLE_N   comma list of idle-stream counts (default 1000,10000)
  BENCH_IDLE_PATHS  paths for the idle suite (default direct,ssh,adit; socat
                 forks a process per connection, so it is excluded by default)
  BENCH_SSH_IDLE_MAX  cap on idle streams through ssh -L (default 1000; opening
                 10,000 ssh channels alone takes ~90 s)
  BENCH_MAX_SECS overall time budget; suites left when it runs out are skipped
                 (default 330, quick 150; +180 / +75 when the compression
                 suite is selected, +120 / +50 for the tls suite, +150 / +60
                 for the fronts suite)
  BENCH_WAIT_QUIET=SECS  wait up to SECS for other CPU load to stop first
  BENCH_TPUT_ROUNDS  iperf3 rounds per path and test, median reported
                 (default 3 x 2 s after 1 s omitted; quick 1)
  BENCH_ROUNDS   connect/ping-pong samples are taken round-robin over the paths
                 in this many rounds and merged (default 5, quick 2)
  BENCH_TLS_ROUNDS  tls suite: iperf3 rounds per path (adit ws://, wss://,
                 wss:// through squid, ssh -L), the paths taking turns; median
                 reported (default 5, quick 2)
  BENCH_COMP_ROUNDS  compression suite: rounds per mode and payload, the modes
                 taking turns; median reported (default 5, quick 2)
  BENCH_CORPUS_MB  size of the JSON-log corpus in MiB (default 64, quick 16)
  BENCH_FRONTS_ROUNDS  fronts suite (-R, -D, UDP; bench/fronts.py): iperf3
                 rounds per path, the paths taking turns; median reported
                 (default 5, quick 2). Connect and UDP request/response
                 samples follow BENCH_ROUNDS.
  BENCH_UDP_RATE / BENCH_UDP_LEN  fronts suite: iperf3 -u target rate and
                 datagram size (default 500M and 1400)
  BENCH_SHAPED=0 skip the compression suite's 100 Mbit/s part (network
                 namespaces + veth + tbf; needs root and ip/tc)
  ADIT_BIN       adit binary (default <repo>/.build/release/adit)
  ADIT_SERVER_ARGS / ADIT_CLIENT_ARGS  extra args (shell-split) for adit
  BENCH_OUT      results directory (default <repo>/bench/results)
  BENCH_NO_INSTALL=1  never apt-get install missing tools (run.sh)
  BENCH_KEEP_TMP=1    keep the temp dir with logs and configs
Command-line flags override the environment; see --help.
"""

import argparse
import datetime
import json
import os
import platform
import random
import resource
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True   # we import benchtool; keep bench/ free of __pycache__
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TOOL = os.path.join(HERE, "benchtool.py")
HOST = "127.0.0.1"
ALL_SUITES = ["throughput", "connect", "pingpong", "saturated", "idle", "tls", "compression", "fronts"]
PATH_SUITES = ALL_SUITES[:5]     # the suites that run over direct/socat/ssh/adit paths
ALL_PATHS = ["direct", "socat", "ssh", "adit"]
LABEL = {"direct": "direct", "socat": "socat 2-hop", "ssh": "ssh -L", "adit": "adit"}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(*a):
    print("[bench %s]" % time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# process bookkeeping


def proc_stat(pid):
    """(ppid, starttime, cpu_ticks incl. reaped children) or None."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return None
    rest = s[s.rfind(")") + 2:].split()
    # rest[0] = state (field 3); field n is rest[n-3]
    ppid = int(rest[1])
    ticks = int(rest[11]) + int(rest[12]) + int(rest[13]) + int(rest[14])
    return ppid, int(rest[19]), ticks


def all_ppids():
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st:
                out[int(name)] = st[0]
    return out


def tree(pid):
    """pid and all its descendants."""
    pp = all_ppids()
    kids = {}
    for p, q in pp.items():
        kids.setdefault(q, []).append(p)
    out, todo = [], [pid]
    while todo and len(out) < 100000:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_rss_kib(pid):
    return sum(rss_kib(p) for p in tree(pid))


def tree_cpu_secs(pids):
    t = 0
    for root in pids:
        for p in tree(root):
            st = proc_stat(p)
            if st:
                t += st[2]
    return t / CLK_TCK


def foreign_cpu_mark():
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:4]]  # user nice system
    except (OSError, ValueError):
        return None
    return time.monotonic(), sum(v) / CLK_TCK, tree_cpu_secs([os.getpid()])


def foreign_cpu_pct(mark):
    """CPU used in user+system mode by processes outside this run's process
    tree since `mark`, as % of all CPUs (noise indicator)."""
    m1 = foreign_cpu_mark()
    if mark is None or m1 is None:
        return None
    wall = m1[0] - mark[0]
    other = (m1[1] - mark[1]) - (m1[2] - mark[2])
    return round(max(0.0, 100.0 * other / (wall * (os.cpu_count() or 1))), 1)


class Procs:
    """Everything we start, stopped by PID (descendants too) on exit."""

    def __init__(self, tmp):
        self.tmp = tmp
        self.items = []   # (name, Popen)

    def start(self, name, argv, stdin=None, stdout=None, log_name=None,
              stop_signal=signal.SIGTERM):
        """stop_signal: what stop() sends first (SIGKILL for processes whose
        orderly shutdown is slow and not needed, e.g. squid)."""
        logf = open(os.path.join(self.tmp, (log_name or name) + ".log"), "ab")
        p = subprocess.Popen(argv, stdin=stdin, stdout=stdout, stderr=logf,
                             start_new_session=True, close_fds=True)
        logf.close()
        p.stop_signal = stop_signal
        self.items.append((name, p))
        return p

    def log_tail(self, name, n=15):
        try:
            with open(os.path.join(self.tmp, name + ".log"), "rb") as f:
                lines = f.read().decode(errors="replace").splitlines()
            return "\n".join(lines[-n:])
        except OSError:
            return ""

    def stop(self, p, grace=3.0):
        snap = []
        for q in tree(p.pid):
            st = proc_stat(q)
            if st and q != p.pid:
                snap.append((q, st[1]))
        if p.poll() is None:
            try:
                os.kill(p.pid, getattr(p, "stop_signal", signal.SIGTERM))
            except ProcessLookupError:
                pass
            try:
                p.wait(grace)
            except subprocess.TimeoutExpired:
                try:
                    os.kill(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                try:
                    p.wait(2)
                except subprocess.TimeoutExpired:
                    pass
        # descendants that outlived the parent (socat fork children, sshd sessions)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            alive = []
            for q, start in snap:
                st = proc_stat(q)
                if st and st[1] == start:
                    alive.append(q)
                    try:
                        os.kill(q, sig)
                    except ProcessLookupError:
                        pass
            if not alive:
                break
            t_end = time.monotonic() + (1.0 if sig == signal.SIGTERM else 0.5)
            while time.monotonic() < t_end and any(
                    proc_stat(q) and proc_stat(q)[1] == s for q, s in snap):
                time.sleep(0.02)
        for i, (n, q) in enumerate(self.items):
            if q is p:
                del self.items[i]
                break

    def stop_all(self):
        for _name, p in reversed(list(self.items)):
            self.stop(p)


# --------------------------------------------------------------------------
# ports and readiness


_taken = set()


class TunnelQueueSampler:
    """Samples, every 10 ms with `ss`, the kernel's queues of one tunnel connection (the server listening on
    `port` on loopback): what a small request written by the client waits behind below the relays' schedulers
    is the client socket's Send-Q (not yet acknowledged) plus the server socket's Recv-Q (not yet read). The
    same figures as SIOCOUTQ and SIOCINQ, read from outside the processes."""

    def __init__(self, port):
        import threading
        self.port = port
        self.samples = []
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def start(self):
        self.thread.start()

    def run(self):
        while not self.stop_event.wait(0.01):
            try:
                out = subprocess.run(["ss", "-tnH", "state", "established",
                                      "( sport = :%d or dport = :%d )" % (self.port, self.port)],
                                     capture_output=True, text=True, timeout=2).stdout
            except (OSError, subprocess.TimeoutExpired):
                return
            client_sendq = server_recvq = None
            for line in out.splitlines():
                f = line.split()
                if len(f) < 4:
                    continue
                recvq, sendq, local = int(f[0]), int(f[1]), f[2]
                if local.endswith(":%d" % self.port):
                    server_recvq = recvq
                else:
                    client_sendq = sendq
            if client_sendq is not None and server_recvq is not None:
                self.samples.append(client_sendq + server_recvq)

    def stop(self):
        self.stop_event.set()
        self.thread.join(5)
        xs = sorted(self.samples)
        if not xs:
            return {"error": "no samples (is ss installed?)"}
        pick = lambda q: xs[min(len(xs) - 1, int(q * len(xs)))] / 1024
        return {"samples": len(xs), "ahead_p50_kib": pick(0.5), "ahead_p99_kib": pick(0.99),
                "ahead_max_kib": xs[-1] / 1024}


def free_port():
    lo = 23000
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            eph_lo = int(f.read().split()[0])
    except OSError:
        eph_lo = 32768
    hi = max(lo + 1000, eph_lo - 1)
    for _ in range(500):
        port = random.randint(lo, hi)
        if port in _taken:
            continue
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind((HOST, port))
        except OSError:
            continue
        finally:
            s.close()
        _taken.add(port)
        return port
    s = socket.socket()
    s.bind((HOST, 0))
    port = s.getsockname()[1]
    s.close()
    _taken.add(port)
    return port


def wait_port(port, timeout, proc=None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.025)
    return False


def echo_ok(port, timeout=1.0):
    try:
        s = socket.create_connection((HOST, port), timeout=timeout)
        s.settimeout(timeout)
        s.sendall(b"ready?")
        got = b""
        while len(got) < 6:
            d = s.recv(16)
            if not d:
                break
            got += d
        s.close()
        return got == b"ready?"
    except OSError:
        return False


def wait_echo(port, timeout, proc_list=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if any(p.poll() is not None for p in proc_list):
            return False
        if echo_ok(port):
            return True
        time.sleep(0.05)
    return False


# --------------------------------------------------------------------------
# paths


class Path:
    def __init__(self, name):
        self.name = name
        self.ports = {}      # target name -> local port to connect to
        self.procs = []      # Popen objects owned by this path
        self.client_pids = []  # RSS/CPU "client side"
        self.server_pids = []  # RSS/CPU "server side"
        self.relay_pids = []   # everything whose CPU counts as relay CPU
        self.commands = []
        self.tunnel_port = None  # the server's port of the one tunnel connection (adit, ssh), for queue sampling


class Bench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.tmp = tempfile.mkdtemp(prefix="adit-bench-")
        self.procs = Procs(self.tmp)
        self.py = sys.executable or "python3"
        self.started = time.monotonic()
        self.results = {s: {} for s in ALL_SUITES}
        self.notes = []
        self.commands = {}
        self.foreign = {}
        self.failed = False
        self.cleanups = []   # callables run by cleanup() before stopping every process

    def remaining(self):
        return self.cfg.max_secs - (time.monotonic() - self.started)

    # ---- targets -------------------------------------------------------
    def start_targets(self):
        p = self.procs.start("echo", [self.py, TOOL, "echo"], stdout=subprocess.PIPE)
        line = p.stdout.readline().strip()
        if not line:
            raise RuntimeError("echo server did not start: " + self.procs.log_tail("echo"))
        self.echo_port = int(line)
        self.iperf_port = free_port()
        self.iperf_argv = ["iperf3", "-s", "-B", HOST, "-p", str(self.iperf_port)]
        self.iperf_proc = self.procs.start("iperf3-server", self.iperf_argv,
                                           stdout=subprocess.DEVNULL)
        if not wait_port(self.iperf_port, 5, self.iperf_proc):
            raise RuntimeError("iperf3 server did not start: " + self.procs.log_tail("iperf3-server"))
        self.commands["echo server"] = "python3 bench/benchtool.py echo  (epoll, TCP_NODELAY, 127.0.0.1)"
        self.commands["iperf3 server"] = " ".join(self.iperf_argv)

    def restart_iperf(self):
        self.procs.stop(self.iperf_proc)
        self.iperf_proc = self.procs.start("iperf3-server", self.iperf_argv,
                                           stdout=subprocess.DEVNULL)
        wait_port(self.iperf_port, 5, self.iperf_proc)

    def targets(self):
        return {"echo": self.echo_port, "iperf": self.iperf_port}

    # ---- path setup ----------------------------------------------------
    def start_path(self, name, tag="", **kw):
        fn = getattr(self, "_start_" + name)
        path = Path(name)
        fn(path, tag, **kw)
        for tname, port in path.ports.items():
            if tname == "echo" and not wait_echo(port, 20, path.procs):
                raise RuntimeError("%s: no echo through %s" % (name, port))
        return path

    def stop_path(self, path):
        for p in reversed(path.procs):
            self.procs.stop(p)

    def _start_direct(self, path, tag):
        path.ports = self.targets()

    def _start_socat(self, path, tag):
        for tname, tport in self.targets().items():
            b = free_port()
            a = free_port()
            argv_b = ["socat", "TCP-LISTEN:%d,bind=%s,fork,reuseaddr" % (b, HOST),
                      "TCP:%s:%d" % (HOST, tport)]
            argv_a = ["socat", "TCP-LISTEN:%d,bind=%s,fork,reuseaddr" % (a, HOST),
                      "TCP:%s:%d" % (HOST, b)]
            pb = self.procs.start("socat-%s-b%s" % (tname, tag), argv_b)
            pa = self.procs.start("socat-%s-a%s" % (tname, tag), argv_a)
            path.procs += [pb, pa]
            for port, p in ((b, pb), (a, pa)):
                if not wait_port(port, 5, p):
                    raise RuntimeError("socat did not listen on %d" % port)
            path.ports[tname] = a
            path.commands += [" ".join(argv_a), " ".join(argv_b)]
        path.relay_pids = [p.pid for p in path.procs]
        path.client_pids = [path.procs[1].pid, path.procs[3].pid]
        path.server_pids = [path.procs[0].pid, path.procs[2].pid]

    def _ssh_setup(self):
        if getattr(self, "ssh_dir", None):
            return
        d = os.path.join(self.tmp, "ssh")
        os.makedirs(d, mode=0o700)
        for k in ("host_key", "user_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "adit-bench",
                            "-f", os.path.join(d, k)], check=True, timeout=30,
                           stdout=subprocess.DEVNULL)
        shutil.copy(os.path.join(d, "user_key.pub"), os.path.join(d, "authorized_keys"))
        if os.geteuid() == 0 and not os.path.isdir("/run/sshd"):
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privsep dir sshd insists on
        self.ssh_dir = d

    def _start_ssh(self, path, tag, client_args=()):
        """client_args: more forwards for the ssh client (-R, -D)."""
        self._ssh_setup()
        d = self.ssh_dir
        sport = free_port()
        conf = os.path.join(d, "sshd_config%s" % tag)
        with open(conf, "w") as f:
            f.write("\n".join([
                "Port %d" % sport,
                "ListenAddress %s" % HOST,
                "HostKey %s/host_key" % d,
                "PidFile %s/sshd%s.pid" % (d, tag),
                "AuthorizedKeysFile %s/authorized_keys" % d,
                "PermitRootLogin prohibit-password",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "AllowTcpForwarding yes",
                "X11Forwarding no",
                "PrintMotd no",
                "UseDNS no",
                "LogLevel ERROR",
                "Ciphers aes128-gcm@openssh.com,chacha20-poly1305@openssh.com",
                "",
            ]))
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        argv_d = [sshd, "-D", "-e", "-f", conf]
        pd = self.procs.start("sshd" + tag, argv_d)
        path.procs.append(pd)
        if not wait_port(sport, 10, pd):
            raise RuntimeError("sshd did not start: " + self.procs.log_tail("sshd" + tag))
        user = os.environ.get("USER") or "root"
        if os.geteuid() == 0:
            user = "root"
        argv_c = ["ssh", "-N", "-F", "/dev/null", "-i", os.path.join(d, "user_key"),
                  "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes",
                  "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                  "-o", "ExitOnForwardFailure=yes", "-o", "LogLevel=ERROR",
                  "-c", "aes128-gcm@openssh.com", "-p", str(sport)]
        for tname, tport in self.targets().items():
            lp = free_port()
            argv_c += ["-L", "%s:%d:%s:%d" % (HOST, lp, HOST, tport)]
            path.ports[tname] = lp
        argv_c += list(client_args)
        argv_c.append("%s@%s" % (user, HOST))
        pc = self.procs.start("ssh" + tag, argv_c)
        path.procs.append(pc)
        if not wait_port(path.ports["echo"], 15, pc):
            raise RuntimeError("ssh -L did not come up: " + self.procs.log_tail("ssh" + tag))
        path.client_pids = [pc.pid]
        path.server_pids = [pd.pid]
        path.relay_pids = [pc.pid, pd.pid]
        path.tunnel_port = sport
        path.commands = [" ".join(argv_d), " ".join(argv_c)]

    def _start_adit(self, path, tag, scheme="ws", server_args=(), client_args=()):
        """scheme ws or wss (then server_args/client_args carry the TLS flags)."""
        binp = self.cfg.adit_bin
        sport = free_port()
        argv_s = [binp, "server", "--listen", "%s:%d" % (HOST, sport), "--allow", "*:*", "--allow", "127.0.0.0/8:*"]
        argv_s += list(server_args) + shlex.split(os.environ.get("ADIT_SERVER_ARGS", ""))
        ps = self.procs.start("adit-server" + tag, argv_s)
        path.procs.append(ps)
        if not wait_port(sport, 15, ps):
            raise RuntimeError("adit server did not listen: " + self.procs.log_tail("adit-server" + tag))
        argv_c = [binp, "client", "%s://%s:%d/" % (scheme, HOST, sport)]
        for tname, tport in self.targets().items():
            lp = free_port()
            argv_c += ["-L", "%s:%d:%s:%d" % (HOST, lp, HOST, tport)]
            path.ports[tname] = lp
        argv_c += list(client_args) + shlex.split(os.environ.get("ADIT_CLIENT_ARGS", ""))
        if not any(a == "--no-proxy" or a.startswith("--proxy") for a in argv_c):
            # A proxy in the environment (adit honours http_proxy as curl does) must not carry the tunnel.
            argv_c.append("--no-proxy")
        pc = self.procs.start("adit-client" + tag, argv_c)
        path.procs.append(pc)
        if not wait_port(path.ports["echo"], 15, pc):
            raise RuntimeError("adit client did not listen: " + self.procs.log_tail("adit-client" + tag))
        path.client_pids = [pc.pid]
        path.server_pids = [ps.pid]
        path.relay_pids = [pc.pid, ps.pid]
        path.tunnel_port = sport
        path.commands = [" ".join(shlex.quote(a) for a in argv_s),
                         " ".join(shlex.quote(a) for a in argv_c)]

    # ---- measurement tools --------------------------------------------
    def tool_json(self, args, timeout, prefix=()):
        try:
            r = subprocess.run(list(prefix) + [self.py, TOOL] + args, capture_output=True,
                               text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": "timeout after %ss" % timeout}
        try:
            return json.loads(r.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"error": "tool failed rc=%s: %s" % (r.returncode, r.stderr.strip()[-400:])}

    def iperf(self, port, secs, parallel=1, reverse=False, omit=1):
        argv = ["iperf3", "-c", HOST, "-p", str(port), "-t", str(secs), "-O", str(omit),
                "-J", "--connect-timeout", "3000"]
        if parallel > 1:
            argv += ["-P", str(parallel)]
        if reverse:
            argv.append("-R")
        return argv

    def parse_iperf(self, out, err=""):
        try:
            j = json.loads(out)
        except ValueError:
            return {"error": "iperf3 output not JSON: %s" % (err or out)[-300:]}
        if j.get("error"):
            return {"error": j["error"]}
        end = j.get("end", {})
        rcv = end.get("sum_received", {})
        snd = end.get("sum_sent", {})
        cpu = end.get("cpu_utilization_percent", {})
        return {"gbps": rcv.get("bits_per_second", 0) / 1e9,
                "sent_gbps": snd.get("bits_per_second", 0) / 1e9,
                "retransmits": snd.get("retransmits"),
                "iperf_cpu_host_pct": cpu.get("host_total"),
                "iperf_cpu_remote_pct": cpu.get("remote_total")}

    def run_iperf(self, path, secs, parallel=1, reverse=False):
        argv = self.iperf(path.ports["iperf"], secs, parallel, reverse)
        cpu0 = tree_cpu_secs(path.relay_pids)
        t0 = time.monotonic()
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 25)
            res = self.parse_iperf(r.stdout, r.stderr)
        except subprocess.TimeoutExpired:
            res = {"error": "iperf3 timed out"}
        wall = time.monotonic() - t0
        if path.relay_pids:
            res["relay_cpu_pct"] = 100.0 * (tree_cpu_secs(path.relay_pids) - cpu0) / wall
        res["command"] = " ".join(argv)
        if "error" in res:
            log("  iperf3 error on %s: %s; restarting iperf3 server" % (path.name, res["error"]))
            self.restart_iperf()
        return res

    # ---- suites --------------------------------------------------------
    def suite_throughput(self, paths):
        """iperf3 through every path; c.tput_rounds rounds, the paths taking
        turns within each round; the median round is reported."""
        c = self.cfg
        out = self.results["throughput"]
        tests = (("single", 1, False), ("single_reverse", 1, True), ("p8", 8, False))
        runs = {(n, k): [] for n in paths for k, _, _ in tests}
        for rnd in range(c.tput_rounds):
            for key, par, rev in tests:
                for name, path in paths.items():
                    if self.remaining() < c.iperf_secs + 25:
                        continue
                    r = self.run_iperf(path, c.iperf_secs, par, rev)
                    runs[(name, key)].append(r)
                    log("  throughput %-7s %-14s round %d: %s" % (name, key, rnd + 1, fmt_gbps(r)))
        for name in paths:
            out[name] = {}
            for key, _, _ in tests:
                out[name][key] = tput_summary(runs[(name, key)])

    def rounds(self, suite, paths, argv_for, total, limit, out=None):
        """Run the tool round-robin over the paths in c.rounds rounds (so slow
        drifts of the machine's state hit every path alike), merge samples.
        Results go to out[name] (default self.results[suite][name])."""
        c = self.cfg
        per = max(1, total // c.rounds)
        merged = {name: {"samples": [], "errors": 0, "first_error": None, "timed_out": False}
                  for name in paths}
        for rnd in range(c.rounds):
            for name, path in paths.items():
                r = self.tool_json(argv_for(path, per) + ["--raw", "--time-limit",
                                                          str(limit / c.rounds)],
                                   limit / c.rounds + 20)
                m = merged[name]
                m["samples"] += r.get("samples_ns", [])
                m["errors"] += r.get("errors", 1 if "error" in r else 0)
                m["first_error"] = m["first_error"] or r.get("first_error") or r.get("error")
                m["timed_out"] = m["timed_out"] or bool(r.get("timed_out"))
                if "lost" in r:   # udpping: requests whose reply never came
                    m["lost"] = m.get("lost", 0) + r["lost"]
        sys.path.insert(0, HERE)
        from benchtool import summarize
        for name in paths:
            m = merged[name]
            r = summarize(m.pop("samples"), dict(m, requested=per * c.rounds, rounds=c.rounds))
            (self.results[suite] if out is None else out)[name] = r
            log("  %-10s %-7s p50 %s  p99 %s%s" % (suite, name, fus(r, "p50_us"),
                                                  fus(r, "p99_us"),
                                                  "  errors %d" % r["errors"] if r["errors"] else ""))

    def suite_connect(self, paths):
        c = self.cfg
        self.rounds("connect", paths,
                    lambda path, n: ["connect", "--port", str(path.ports["echo"]), "--count", str(n)],
                    c.connect_n, c.loop_limit)

    def pingpong(self, port, count=None, limit=None):
        c = self.cfg
        limit = limit or c.loop_limit
        return self.tool_json(["pingpong", "--port", str(port), "--count",
                               str(count or c.pingpong_n), "--size", "64",
                               "--time-limit", str(limit)], limit + 20)

    def suite_pingpong(self, paths):
        c = self.cfg
        self.rounds("pingpong", paths,
                    lambda path, n: ["pingpong", "--port", str(path.ports["echo"]), "--count",
                                     str(n), "--size", "64"],
                    c.pingpong_n, c.loop_limit)

    def suite_saturated(self, paths):
        c = self.cfg
        for name, path in paths.items():
            if self.remaining() < c.sat_secs + 30:
                self.results["saturated"][name] = {"error": "skipped: time budget"}
                continue
            argv = self.iperf(path.ports["iperf"], c.sat_secs, 1, False, omit=0)
            bg = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True)
            sampler = TunnelQueueSampler(path.tunnel_port) if path.tunnel_port else None
            try:
                time.sleep(1.0)
                if sampler:
                    sampler.start()
                r = self.pingpong(path.ports["echo"], limit=c.sat_secs - 2.5)
                if sampler:
                    r["tunnel_queue"] = sampler.stop()
                try:
                    o, e = bg.communicate(timeout=c.sat_secs + 20)
                    r["background"] = self.parse_iperf(o, e)
                except subprocess.TimeoutExpired:
                    r["background"] = {"error": "iperf3 timed out"}
                r["background_command"] = " ".join(argv)
            finally:
                if bg.poll() is None:
                    bg.kill()
                    bg.wait()
            if "error" in r.get("background", {}):
                self.restart_iperf()
            self.results["saturated"][name] = r
            q = r.get("tunnel_queue") or {}
            log("  saturated  %-7s p50 %s  p99 %s  (bg %s)%s" % (
                name, fus(r, "p50_us"), fus(r, "p99_us"), fmt_gbps(r.get("background", {})),
                "  queued ahead in the tunnel socket p50 %.0f / p99 %.0f KiB" % (
                    q["ahead_p50_kib"], q["ahead_p99_kib"]) if "ahead_p50_kib" in q else ""))

    def suite_idle(self, names):
        c = self.cfg
        for name in names:
            if self.remaining() < 45:
                self.results["idle"][name] = {"error": "skipped: time budget"}
                continue
            path = None
            holder = None
            cap = c.ssh_idle_max if name == "ssh" else None
            counts = [n for n in c.idle_n if cap is None or n <= cap] or [min(c.idle_n)]
            res = {"steps": [], "counts": counts}
            if counts != c.idle_n:
                res["note"] = "limited to %s streams (BENCH_SSH_IDLE_MAX)" % max(counts)
                self.notes.append("%s idle suite limited to %s streams: opening 10,000 ssh "
                                  "channels takes ~90 s (set BENCH_SSH_IDLE_MAX=10000 to include)"
                                  % (LABEL[name], max(counts)))
            self.results["idle"][name] = res
            try:
                path = self.start_path(name, tag="-idle") if name != "direct" else self.start_path("direct")
                port = path.ports["echo"]
                # warm-up: a few streams opened and closed, then baseline RSS
                for _ in range(10):
                    echo_ok(port)
                time.sleep(0.3)
                res["steps"].append(self.idle_sample(path, 0))
                step_timeout = max(10, min(c.idle_step_timeout, self.remaining() - 30))
                holder = subprocess.Popen(
                    [self.py, TOOL, "hold", "--port", str(port), "--step-timeout",
                     str(step_timeout)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, text=True, start_new_session=True)
                for n in counts:
                    if self.remaining() < 20:
                        res["error"] = "stopped early: time budget"
                        break
                    holder.stdin.write("open %d\n" % n)
                    holder.stdin.flush()
                    opened = json.loads(holder.stdout.readline() or "{}")
                    time.sleep(0.5)  # let allocations settle
                    step = self.idle_sample(path, n)
                    step["open"] = opened
                    if opened.get("held") != n:
                        step["error"] = "only %s of %d established" % (opened.get("held"), n)
                    if n == max(counts):
                        step["pingpong"] = self.pingpong(port, limit=c.idle_pp_limit)
                        holder.stdin.write("verify\n")
                        holder.stdin.flush()
                        step["verify"] = json.loads(holder.stdout.readline() or "{}")
                    res["steps"].append(step)
                    log("  idle       %-7s n=%-6d held=%s client %s KiB server %s KiB%s" % (
                        name, n, opened.get("held"), step.get("rss_client_kib"),
                        step.get("rss_server_kib"),
                        ("  pingpong p50 %s p99 %s" % (fus(step["pingpong"], "p50_us"),
                                                       fus(step["pingpong"], "p99_us"))
                         if "pingpong" in step else "")))
                holder.stdin.write("close\n")
                holder.stdin.flush()
                holder.stdout.readline()
                time.sleep(1.0)
                res["after_close"] = self.idle_sample(path, 0)
                base = res["steps"][0]
                res["kib_per_stream"] = {}
                for st in res["steps"][1:]:
                    if st.get("error"):
                        continue
                    kp = {}
                    for side in ("client", "server"):
                        k = "rss_%s_kib" % side
                        if base.get(k) is not None and st.get(k) is not None:
                            kp[side] = (st[k] - base[k]) / st["n"]
                    res["kib_per_stream"][str(st["n"])] = kp
            except Exception as e:  # keep going with the other paths
                res["error"] = "%s: %s" % (type(e).__name__, e)
                log("  idle %s failed: %s" % (name, res["error"]))
            finally:
                if holder is not None:
                    if holder.poll() is None:
                        try:
                            holder.stdin.close()   # EOF makes it close all and exit
                        except OSError:
                            pass
                        try:
                            holder.wait(5)
                        except subprocess.TimeoutExpired:
                            holder.kill()
                            holder.wait()
                if path is not None and name != "direct":
                    self.stop_path(path)

    def idle_sample(self, path, n):
        st = {"n": n}
        if path.client_pids:
            st["rss_client_kib"] = sum(tree_rss_kib(p) for p in path.client_pids)
            st["rss_server_kib"] = sum(tree_rss_kib(p) for p in path.server_pids)
        return st

    # ---- main ----------------------------------------------------------
    def run(self):
        c = self.cfg
        paths = {}
        if any(s in PATH_SUITES for s in c.suites):
            self.start_targets()
        for name in (c.paths if any(s in PATH_SUITES for s in c.suites) else []):
            if name == "adit" and not c.adit_available:
                continue
            try:
                paths[name] = self.start_path(name)
                log("path %-7s ready: %s" % (name, paths[name].ports))
                if paths[name].commands:
                    self.commands[LABEL[name]] = paths[name].commands
            except Exception as e:
                log("path %s failed to start: %s" % (name, e))
                self.failed = True
                self.notes.append("%s: failed to start: %s" % (name, e))
        for suite in c.suites:
            if self.remaining() < 15:
                self.notes.append("suite %s skipped: time budget" % suite)
                continue
            log("suite %s" % suite)
            m0 = foreign_cpu_mark()
            if suite == "idle":
                # the idle suite starts fresh tunnel instances of its own
                self.suite_idle([n for n in c.idle_paths if n in paths])
            elif suite == "tls":
                # adit over wss:// (direct, through squid), ws:// and ssh -L, all
                # instances of its own (see bench/tls.py)
                sys.path.insert(0, HERE)
                from tls import suite_tls
                suite_tls(self, sys.modules[__name__])
            elif suite == "compression":
                # adit only, with tunnels of its own (see bench/compression.py)
                sys.path.insert(0, HERE)
                from compression import suite_compression
                suite_compression(self, sys.modules[__name__])
            elif suite == "fronts":
                # adit -R / -D / -L …/udp beside ssh -R / -D and direct, with
                # instances of its own (see bench/fronts.py)
                sys.path.insert(0, HERE)
                from fronts import suite_fronts
                suite_fronts(self, sys.modules[__name__])
            else:
                getattr(self, "suite_" + suite)(paths)
            f = foreign_cpu_pct(m0)
            self.foreign[suite] = f
            if f is not None and f > 5:
                log("  warning: other processes used %.0f%% of the CPUs during %s" % (f, suite))
                self.notes.append("other processes used %.0f%% of the CPUs during %s" % (f, suite))
        for p in paths.values():
            self.stop_path(p)

    def cleanup(self):
        for fn in reversed(self.cleanups):
            try:
                fn()
            except Exception as e:
                log("cleanup %s failed: %s" % (getattr(fn, "__name__", fn), e))
        self.procs.stop_all()
        if os.environ.get("BENCH_KEEP_TMP") != "1":
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            log("kept temp dir", self.tmp)


# --------------------------------------------------------------------------
# report


def tput_summary(rs):
    """The median (lower median) of iperf3 rounds `rs`, with every round's
    Gbit/s and relay CPU, and the median Gbit/s per relay CPU core."""
    good = sorted((r for r in rs if "gbps" in r), key=lambda r: r["gbps"])
    if not good:
        return {"error": (rs[0].get("error") if rs else "skipped: time budget")}
    med = dict(good[(len(good) - 1) // 2])   # lower median
    med["rounds_gbps"] = [round(r.get("gbps", 0), 3) for r in rs]
    med["rounds_relay_cpu_pct"] = [round(r["relay_cpu_pct"], 1)
                                   for r in rs if "relay_cpu_pct" in r]
    med["errors"] = len(rs) - len(good)
    eff = sorted(r["gbps"] / (r["relay_cpu_pct"] / 100.0) for r in good
                 if r.get("relay_cpu_pct"))
    if eff:
        med["gbps_per_relay_core"] = eff[(len(eff) - 1) // 2]
    return med


def fus(r, k):
    v = (r or {}).get(k)
    return "%.0f µs" % v if isinstance(v, (int, float)) else "-"


def fmt_gbps(r):
    if not r or "gbps" not in r:
        return (r or {}).get("error", "-")
    return "%.2f Gbit/s" % r["gbps"]


def get(d, *ks):
    for k in ks:
        if not isinstance(d, dict):
            return None
        d = d.get(k)
    return d


def build_report(bench, cfg):
    R = bench.results
    paths = [p for p in ALL_PATHS if p in cfg.paths]
    maxn = str(max(cfg.idle_n))

    def cell(v, fmt):
        if v is None:
            return "-"
        return fmt % v

    def pcell(name, *ks, fmt="%.1f"):
        if name == "adit" and not cfg.adit_available:
            return "pending"
        return cell(get(R, *ks), fmt)

    rows = []
    SU = [None]   # suite of the rows being added

    def row(label, fn):
        if SU[0] in cfg.suites:
            rows.append([label] + [fn(p) for p in paths])

    SU[0] = "throughput"
    med = ", median of %d" % cfg.tput_rounds if cfg.tput_rounds > 1 else ""

    row("Throughput, 1 stream (Gbit/s%s)" % med, lambda p: pcell(p, "throughput", p, "single", "gbps", fmt="%.2f"))
    row("Throughput, 1 stream reverse -R (Gbit/s%s)" % med, lambda p: pcell(p, "throughput", p, "single_reverse", "gbps", fmt="%.2f"))
    row("Throughput, 8 streams (Gbit/s%s)" % med, lambda p: pcell(p, "throughput", p, "p8", "gbps", fmt="%.2f"))
    row("Relay CPU during 1 stream (% of one core)", lambda p: pcell(p, "throughput", p, "single", "relay_cpu_pct", fmt="%.0f"))
    row("1 stream, Gbit/s per relay CPU core%s" % med, lambda p: pcell(p, "throughput", p, "single", "gbps_per_relay_core", fmt="%.2f"))
    SU[0] = "connect"
    row("Connect + first byte p50 (µs)", lambda p: pcell(p, "connect", p, "p50_us", fmt="%.0f"))
    row("Connect + first byte p99 (µs)", lambda p: pcell(p, "connect", p, "p99_us", fmt="%.0f"))
    SU[0] = "pingpong"
    row("Ping-pong 64 B p50 (µs)", lambda p: pcell(p, "pingpong", p, "p50_us", fmt="%.0f"))
    row("Ping-pong 64 B p99 (µs)", lambda p: pcell(p, "pingpong", p, "p99_us", fmt="%.0f"))
    SU[0] = "saturated"
    row("Ping-pong p50 beside saturated stream (µs)", lambda p: pcell(p, "saturated", p, "p50_us", fmt="%.0f"))
    row("Ping-pong p99 beside saturated stream (µs)", lambda p: pcell(p, "saturated", p, "p99_us", fmt="%.0f"))
    row("  (saturating stream meanwhile, Gbit/s)", lambda p: pcell(p, "saturated", p, "background", "gbps", fmt="%.2f"))
    row("  (bytes queued in the tunnel socket ahead of a request, p50 / p99 KiB)",
        lambda p: "%.0f / %.0f" % (get(R, "saturated", p, "tunnel_queue", "ahead_p50_kib"),
                                   get(R, "saturated", p, "tunnel_queue", "ahead_p99_kib"))
        if get(R, "saturated", p, "tunnel_queue", "ahead_p50_kib") is not None else "n/a")

    def idle_step(p, n):
        for st in get(R, "idle", p, "steps") or []:
            if str(st.get("n")) == str(n):
                return st
        return None

    def idle_cell(p, fn, fmt):
        if p not in cfg.idle_paths:
            return "n/a"
        if p == "adit" and not cfg.adit_available:
            return "pending"
        try:
            return cell(fn(p), fmt)
        except (TypeError, KeyError):
            return "-"

    def idle_pp(p, k):
        steps = [st for st in get(R, "idle", p, "steps") or [] if "pingpong" in st]
        if not steps:
            return "-"
        st = steps[-1]
        v = get(st, "pingpong", k)
        if v is None:
            return "-"
        return ("%.0f" % v) + ("" if str(st["n"]) == maxn else " (at %s)" % st["n"])

    SU[0] = "idle"
    row("Ping-pong p50 with %s idle streams open (µs)" % maxn,
        lambda p: idle_cell(p, lambda p: idle_pp(p, "p50_us"), "%s"))
    row("Ping-pong p99 with %s idle streams open (µs)" % maxn,
        lambda p: idle_cell(p, lambda p: idle_pp(p, "p99_us"), "%s"))
    for n in cfg.idle_n:
        for side in ("client", "server"):
            row("RSS %s side, %s idle streams (KiB)" % (side, n),
                lambda p, n=n, side=side: "n/a" if p == "direct" else idle_cell(
                    p, lambda p: get(idle_step(p, n), "rss_%s_kib" % side), "%d"))
    for side in ("client", "server"):
        row("RSS %s side, 0 streams (KiB)" % side,
            lambda p, side=side: "n/a" if p == "direct" else idle_cell(
                p, lambda p: get(idle_step(p, 0), "rss_%s_kib" % side), "%d"))
    for n in cfg.idle_n:
        for side in ("client", "server"):
            row("KiB per idle stream, %s side (N=%s)" % (side, n),
                lambda p, n=n, side=side: "n/a" if p == "direct" else idle_cell(
                    p, lambda p: get(R, "idle", p, "kib_per_stream", str(n), side), "%.1f"))

    table = ["| Metric | " + " | ".join(LABEL[p] for p in paths) + " |",
             "|---|" + "---:|" * len(paths)]
    for r in rows:
        table.append("| " + " | ".join(r) + " |")
    if not any(s in PATH_SUITES for s in cfg.suites):
        table = []
    tls_targets = []
    if "tls" in cfg.suites:
        sys.path.insert(0, HERE)
        from tls import report as tls_report
        ttable_tls, tls_targets = tls_report(bench, cfg)
        table += ([""] if table else []) + [ttable_tls]
    comp_targets = []
    if "compression" in cfg.suites:
        sys.path.insert(0, HERE)
        from compression import report as compression_report
        ctable, comp_targets = compression_report(bench, cfg)
        table += ([""] if table else []) + [ctable]
    fronts_targets = []
    if "fronts" in cfg.suites:
        sys.path.insert(0, HERE)
        from fronts import report as fronts_report
        ftable, fronts_targets = fronts_report(bench, cfg)
        table += ([""] if table else []) + [ftable]

    # targets
    def ratio(a, b):
        if a is None or b in (None, 0):
            return None
        return a / b

    adit = cfg.adit_available and "adit" in cfg.paths
    A = lambda *ks: get(R, *ks) if adit else None
    tgt = []

    def target(suite, name, value, vfmt, goal, ok):
        if suite not in cfg.suites:
            return
        if not adit:
            tgt.append({"target": name, "value": None, "goal": goal, "pass": None})
        else:
            tgt.append({"target": name, "value": value, "goal": goal,
                        "pass": (None if value is None else bool(ok(value))),
                        "shown": (vfmt % value) if value is not None else "-"})

    target("throughput", "single-stream throughput adit / socat 2-hop",
           ratio(A("throughput", "adit", "single", "gbps"), get(R, "throughput", "socat", "single", "gbps")),
           "%.2f×", "≥ 1.5×", lambda v: v >= 1.5)
    target("throughput", "single-stream throughput adit / ssh -L",
           ratio(A("throughput", "adit", "single", "gbps"), get(R, "throughput", "ssh", "single", "gbps")),
           "%.2f×", "≥ 1.5×", lambda v: v >= 1.5)
    target("connect", "connect + first byte p50 adit / direct",
           ratio(A("connect", "adit", "p50_us"), get(R, "connect", "direct", "p50_us")),
           "%.2f×", "≤ 2×", lambda v: v <= 2.0)
    target("pingpong", "ping-pong p50 adit / socat 2-hop",
           ratio(A("pingpong", "adit", "p50_us"), get(R, "pingpong", "socat", "p50_us")),
           "%.2f×", "≤ 1×", lambda v: v <= 1.0)
    target("saturated", "ping-pong p99 beside a saturated stream (adit)",
           A("saturated", "adit", "p99_us"), "%.0f µs", "< 2000 µs", lambda v: v < 2000)
    target("idle", "ping-pong p99 with %s idle streams (adit)" % maxn,
           get(idle_step("adit", maxn), "pingpong", "p99_us") if adit else None,
           "%.0f µs", "< 500 µs", lambda v: v < 500)
    for side in ("client", "server"):
        target("idle", "RSS per idle stream, %s side (adit, N=%s)" % (side, maxn),
               A("idle", "adit", "kib_per_stream", maxn, side), "%.1f KiB", "< 10 KiB",
               lambda v: v < 10)
    for name, value, vfmt, goal, ok in tls_targets:
        target("tls", name, value, vfmt, goal, ok)
    for name, value, vfmt, goal, ok in comp_targets:
        target("compression", name, value, vfmt, goal, ok)
    for name, value, vfmt, goal, ok in fronts_targets:
        target("fronts", name, value, vfmt, goal, ok)

    ttable = ["| Target | Measured | Goal | Result |", "|---|---:|---|---|"]
    for t in tgt:
        if not adit:
            shown = res = "pending" if "adit" in cfg.paths else "not run"
        else:
            shown = t.get("shown", "-")
            res = "n/a (not measured)" if t["pass"] is None else ("PASS" if t["pass"] else "FAIL")
        ttable.append("| %s | %s | %s | %s |" % (t["target"], shown, t["goal"], res))
    return "\n".join(table), "\n".join(ttable), tgt


def host_info():
    def ver(argv):
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=5)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None
    def ver_all(argv):
        try:
            return subprocess.run(argv, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "machine": platform.machine(),
        "kernel": platform.release(), "python": platform.python_version(),
        "iperf3": ver(["iperf3", "--version"]),
        "socat": next((l for l in (ver_all(["socat", "-V"]) or "").splitlines()
                       if l.startswith("socat version")), None),
        "ssh": ver(["ssh", "-V"]),
    }


def adit_version(cfg):
    if not cfg.adit_available:
        return None
    try:
        r = subprocess.run([cfg.adit_bin, "--version"], capture_output=True, text=True, timeout=10)
        v = (r.stdout or r.stderr).strip()
    except (OSError, subprocess.TimeoutExpired):
        v = None
    mtime = datetime.datetime.fromtimestamp(os.path.getmtime(cfg.adit_bin)).astimezone()
    return {"version": v, "binary_mtime": mtime.isoformat(timespec="seconds")}


def cpu_busy_pct(secs=1.0):
    """Share of all CPUs busy (any process) over `secs`, from /proc/stat."""
    def snap():
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + v[4]
        return sum(v), idle
    try:
        t0, i0 = snap()
        time.sleep(secs)
        t1, i1 = snap()
        return round(100.0 * (1 - (i1 - i0) / max(1, t1 - t0)), 1)
    except (OSError, ValueError):
        return None


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


# --------------------------------------------------------------------------


def parse_cfg(argv):
    env = os.environ.get
    ap = argparse.ArgumentParser(description="Adit benchmark (see docs/benchmarks.md)")
    ap.add_argument("--only", default=env("BENCH_ONLY", ""),
                    help="suites: " + ",".join(ALL_SUITES))
    ap.add_argument("--paths", default=env("BENCH_PATHS", ""), help="paths: " + ",".join(ALL_PATHS))
    ap.add_argument("--quick", action="store_true", default=env("BENCH_QUICK", "") not in ("", "0"))
    ap.add_argument("--idle-n", dest="idle_n_raw", default=env("BENCH_IDLE_N", ""),
                    help="idle stream counts, e.g. 1000,10000")
    ap.add_argument("--idle-paths", default=env("BENCH_IDLE_PATHS", "direct,ssh,adit"))
    ap.add_argument("--max-secs", type=float, default=float(env("BENCH_MAX_SECS", "0") or 0))
    ap.add_argument("--adit-bin", default=env("ADIT_BIN", os.path.join(REPO, ".build", "release", "adit")))
    ap.add_argument("--out", default=env("BENCH_OUT", os.path.join(HERE, "results")))
    c = ap.parse_args(argv)
    c.suites = [s for s in (c.only.split(",") if c.only else ALL_SUITES) if s]
    bad = [s for s in c.suites if s not in ALL_SUITES]
    if bad:
        ap.error("unknown suite(s) %s; known: %s" % (bad, ALL_SUITES))
    c.paths = [p for p in (c.paths.split(",") if c.paths else ALL_PATHS) if p]
    bad = [p for p in c.paths if p not in ALL_PATHS]
    if bad:
        ap.error("unknown path(s) %s; known: %s" % (bad, ALL_PATHS))
    c.adit_available = os.path.isfile(c.adit_bin) and os.access(c.adit_bin, os.X_OK)
    if not c.only and "adit" not in c.paths:
        for s in ("tls", "compression", "fronts"):   # adit suites; bench-baselines stays as it was
            c.suites.remove(s)
    c.idle_paths = [p for p in c.idle_paths.split(",") if p in c.paths]
    if c.quick:
        c.iperf_secs, c.sat_secs = 2, 5
        c.connect_n, c.pingpong_n = 300, 2000
        c.idle_n = [1000]
        c.max_secs = c.max_secs or (150 + (75 if "compression" in c.suites else 0)
                                    + (50 if "tls" in c.suites else 0)
                                    + (60 if "fronts" in c.suites else 0))
    else:
        c.iperf_secs, c.sat_secs = 2, 9
        c.connect_n, c.pingpong_n = 1000, 5000
        c.idle_n = [1000, 10000]
        c.max_secs = c.max_secs or (330 + (180 if "compression" in c.suites else 0)
                                    + (120 if "tls" in c.suites else 0)
                                    + (150 if "fronts" in c.suites else 0))
    if c.idle_n_raw:
        c.idle_n = sorted({int(x) for x in c.idle_n_raw.split(",") if x.strip()})
    c.loop_limit = 10.0 if c.quick else 20.0
    c.idle_step_timeout = 90.0
    c.idle_pp_limit = 5.0 if c.quick else 10.0
    c.ssh_idle_max = int(env("BENCH_SSH_IDLE_MAX", "1000"))
    c.wait_quiet = float(env("BENCH_WAIT_QUIET", "0") or 0)
    c.rounds = max(1, int(env("BENCH_ROUNDS", "2" if c.quick else "5")))
    c.tput_rounds = max(1, int(env("BENCH_TPUT_ROUNDS", "1" if c.quick else "3")))
    # tls suite (bench/tls.py)
    c.tls_rounds = max(1, int(env("BENCH_TLS_ROUNDS", "2" if c.quick else "5")))
    # compression suite (bench/compression.py)
    c.comp_rounds = max(1, int(env("BENCH_COMP_ROUNDS", "2" if c.quick else "5")))
    c.comp_corpus_bytes = int(float(env("BENCH_CORPUS_MB", "16" if c.quick else "64")) * (1 << 20))
    c.comp_random_bytes = (256 if c.quick else 1024) << 20   # cap per transfer
    c.comp_random_secs = 1.5 if c.quick else 3.0             # and send-time cap
    c.comp_shaped = env("BENCH_SHAPED", "1") not in ("0", "")
    # fronts suite (bench/fronts.py)
    c.fronts_rounds = max(1, int(env("BENCH_FRONTS_ROUNDS", "2" if c.quick else "5")))
    c.udp_rate = env("BENCH_UDP_RATE", "500M")
    c.udp_len = int(env("BENCH_UDP_LEN", "1400"))
    c.udp_secs = 2 if c.quick else 3
    return c


def main(argv=None):
    cfg = parse_cfg(argv if argv is not None else sys.argv[1:])

    # file descriptors: the hold client, echo server and each tunnel end hold
    # one fd per idle stream.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
    except (ValueError, OSError):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    notes = []
    if nofile < want:
        notes.append("RLIMIT_NOFILE could only be raised to %d (hard limit; no CAP_SYS_RESOURCE)" % nofile)
    fit = [n for n in cfg.idle_n if n + 1024 <= nofile]
    if len(fit) < len(cfg.idle_n):
        notes.append("idle counts %s exceed the fd limit %d; using %s" % (
            [n for n in cfg.idle_n if n not in fit], nofile, fit))
        cfg.idle_n = fit or [max(100, nofile - 1024)]

    if "adit" in cfg.paths and not cfg.adit_available:
        notes.append("adit binary not found at %s: adit rows are pending" % cfg.adit_bin)

    missing = [t for t in ("iperf3", "socat", "ssh", "sshd", "ssh-keygen")
               if not (shutil.which(t) or os.path.exists("/usr/sbin/" + t))]
    need = set()
    if any(s in cfg.suites for s in ("throughput", "saturated", "tls", "fronts")):
        need.add("iperf3")
    path_suites = any(s in PATH_SUITES for s in cfg.suites)
    if "socat" in cfg.paths and path_suites:
        need.add("socat")
    if "ssh" in cfg.paths and (path_suites or "tls" in cfg.suites or "fronts" in cfg.suites):
        need |= {"ssh", "sshd", "ssh-keygen"}
    if set(missing) & need:
        print("missing tools: %s (run bench/run.sh, which installs them with apt-get)" %
              sorted(set(missing) & need), file=sys.stderr)
        return 2

    bench = Bench(cfg)
    bench.notes = notes
    for n in notes:
        log("note:", n)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, on_signal)

    busy0 = cpu_busy_pct()
    if cfg.wait_quiet and busy0 is not None and busy0 > 10:
        log("waiting up to %.0f s for the machine to go quiet (CPU busy %.0f%%)" % (
            cfg.wait_quiet, busy0))
        t_end = time.monotonic() + cfg.wait_quiet
        while busy0 > 10 and time.monotonic() < t_end:
            busy0 = cpu_busy_pct(2.0)
        bench.started = time.monotonic()
    started = datetime.datetime.now().astimezone()
    la0 = loadavg()
    if busy0 is not None and busy0 > 10:
        log("warning: CPUs %.0f%% busy before start (load %s); numbers will be noisy" % (busy0, la0))
        bench.notes.append("CPUs were %.0f%% busy with other work at start (load %s)" % (busy0, la0))
    log("suites=%s paths=%s quick=%s idle_n=%s adit=%s tmp=%s" % (
        ",".join(cfg.suites), ",".join(cfg.paths), cfg.quick, cfg.idle_n,
        cfg.adit_bin if cfg.adit_available else "pending", bench.tmp))
    rc = 0
    try:
        bench.run()
    except KeyboardInterrupt as e:
        log("interrupted (%s); stopping everything" % (e or "SIGINT"))
        bench.notes.append("run interrupted")
        rc = 130
    except Exception as e:
        log("error: %s: %s" % (type(e).__name__, e))
        bench.notes.append("error: %s: %s" % (type(e).__name__, e))
        rc = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.cleanup()
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    if rc == 0 and bench.failed:
        rc = 1   # a path did not start; targets never fail the run
    table, ttable, targets = build_report(bench, cfg)
    elapsed = time.monotonic() - bench.started
    doc = {
        "meta": {
            "started": started.isoformat(timespec="seconds"),
            "elapsed_secs": round(elapsed, 1),
            "host": host_info(),
            "loadavg_start": la0, "loadavg_end": loadavg(),
            "cpu_busy_pct_before_start": busy0,
            "foreign_cpu_pct_by_suite": bench.foreign,
            "quick": cfg.quick, "suites": cfg.suites, "paths": cfg.paths,
            "idle_paths": cfg.idle_paths, "idle_n": cfg.idle_n,
            "adit_bin": cfg.adit_bin, "adit_available": cfg.adit_available,
            "adit_version": adit_version(cfg),
            "params": {"iperf_secs": cfg.iperf_secs, "iperf_omit_secs": 1,
                       "saturated_secs": cfg.sat_secs, "connect_n": cfg.connect_n,
                       "pingpong_n": cfg.pingpong_n, "pingpong_size": 64,
                       "tls_rounds": cfg.tls_rounds, "fronts_rounds": cfg.fronts_rounds,
                       "udp_rate": cfg.udp_rate, "udp_len": cfg.udp_len,
                       "udp_secs": cfg.udp_secs,
                       "nofile": nofile},
            "commands": bench.commands,
            "notes": bench.notes,
            "exit_code": rc,
        },
        "results": bench.results,
        "targets": targets,
        "markdown": {"results": table, "targets": ttable},
    }
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, "latest.json"), "w") as f:
        json.dump(doc, f, indent=2, default=str)
    h = doc["meta"]["host"]
    md = "Run %s, %s, %s cores (%s), kernel %s, load %s -> %s%s\n\n%s\n\n%s\n" % (
        started.strftime("%Y-%m-%d %H:%M"), h["machine"], h["cpus"], h["cpu_model"],
        h["kernel"], la0, doc["meta"]["loadavg_end"], ", quick mode" if cfg.quick else "",
        table, ttable)
    if bench.foreign:
        md += "\nCPU used by other processes during each suite (%% of all CPUs): %s\n" % ", ".join(
            "%s %s" % (k, "-" if v is None else "%.0f%%" % v) for k, v in bench.foreign.items())
    if bench.notes:
        md += "\nNotes:\n" + "".join("- %s\n" % n for n in bench.notes)
    with open(os.path.join(cfg.out, "latest.md"), "w") as f:
        f.write(md)
    print()
    print(md)
    log("done in %.0f s; wrote %s/latest.json and latest.md" % (elapsed, cfg.out))
    return rc


if __name__ == "__main__":
    sys.exit(main())
