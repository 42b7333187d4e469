"""TLS suite of the Adit benchmark (BENCH_ONLY=tls), called from bench/run.py;
see docs/benchmarks.md.

adit over wss:// (a certificate from `adit keygen`, trusted by the client with
--ca-file), straight to the server and through squid (an HTTP CONNECT proxy,
no auth), beside adit over plain ws:// (the cost of TLS) and ssh -L (the
harness's private sshd, aes128-gcm@openssh.com). All instances are the suite's
own, each forwarding to the harness's echo server and iperf3 server:
  throughput  iperf3, one stream, through every path; c.tls_rounds rounds, the
              paths taking turns (the order rotating each round); the median
              round is reported, as the throughput suite does
  connect     connect + first byte (benchtool.py connect): c.connect_n
              sequential connections per path, round-robin over the paths in
              c.rounds rounds, p50/p99, as the connect suite does
adit runs with --compression off on both sides (iperf3's payload is random);
one more wss:// tunnel with the default compression (auto) is measured for
throughput only.

squid runs as `squid -n NAME -N -f DIR/squid.conf`, DIR a 0755 directory under
/tmp owned by `proxy` (squid started as root switches to that user), NAME
unique and alphanumeric (squid names its /dev/shm segments after it). It is
stopped with SIGKILL (SIGTERM takes 1-2.5 s), its process group too; then its
/dev/shm segments and DIR are deleted.
"""

import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time

H = None   # bench/run.py as a module (log, free_port, wait_port, tput_summary, ...)

# paths of this suite, in table order
ORDER = ("ws", "wss", "wss_squid", "wss_auto", "ssh")
LABEL = {"ws": "adit ws://", "wss": "adit wss://", "wss_squid": "adit wss:// via squid",
         "wss_auto": "adit wss://, compression auto", "ssh": "ssh -L"}
CONNECT_PATHS = ("ws", "wss", "wss_squid", "ssh")   # wss_auto: same stream setup as wss
SQUID_TMP = "/tmp"
SQUID_PREFIX = "adit-bench-squid-"
SHM_RE = re.compile(r"aditbench(\d+)x[0-9a-f]+-")


# --------------------------------------------------------------------------
# squid


def squid_conf(d, port):
    return "\n".join([
        "http_port %s:%d" % (H.HOST, port),
        "visible_hostname squid-bench",
        "pid_filename %s/squid.pid" % d,
        "cache_log %s/cache.log" % d,
        "access_log none",
        "cache_store_log none",
        "coredump_dir %s" % d,
        "netdb_filename none",
        "pinger_enable off",
        "cache_mem 8 MB",
        "cache deny all",
        "shutdown_lifetime 0 seconds",
        "acl loopback_dst dst 127.0.0.1/32",
        "http_access deny CONNECT !loopback_dst",
        "http_access allow localhost loopback_dst",
        "http_access deny all",
        "",
    ])


def remove_stale_squid_leftovers():
    """/dev/shm segments and /tmp dirs of earlier runs that were killed with
    SIGKILL (named after the run's PID; removed when that PID is gone)."""
    for f in glob.glob("/dev/shm/aditbench*-*"):
        m = SHM_RE.match(os.path.basename(f))
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            try:
                os.unlink(f)
            except OSError:
                pass
    for d in glob.glob(os.path.join(SQUID_TMP, SQUID_PREFIX + "*")):
        m = re.match(re.escape(SQUID_PREFIX) + r"(\d+)-", os.path.basename(d))
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            shutil.rmtree(d, ignore_errors=True)


class Squid:
    def __init__(self, bench):
        self.bench = bench
        self.proc = None
        self.dir = None
        self.port = None
        # -n: alphanumeric only; unique, or instances share /dev/shm segments
        self.name = "aditbench%dx%s" % (os.getpid(), secrets.token_hex(4))
        self.argv = None

    def start(self):
        binp = shutil.which("squid") or "/usr/sbin/squid"
        if not os.access(binp, os.X_OK):
            raise RuntimeError("squid not installed (package squid; bench/run.sh installs it as root)")
        remove_stale_squid_leftovers()
        self.bench.cleanups.append(self.stop)
        self.dir = tempfile.mkdtemp(prefix="%s%d-" % (SQUID_PREFIX, os.getpid()), dir=SQUID_TMP)
        os.chmod(self.dir, 0o755)
        if os.geteuid() == 0:
            # squid started as root runs as cache_effective_user (built in: proxy),
            # which must be able to enter and write the directory
            try:
                pw = pwd.getpwnam("proxy")
                os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass
        self.port = H.free_port()
        conf = os.path.join(self.dir, "squid.conf")
        with open(conf, "w") as f:
            f.write(squid_conf(self.dir, self.port))
        os.chmod(conf, 0o644)
        self.argv = [binp, "-n", self.name, "-N", "-f", conf]
        self.proc = self.bench.procs.start("squid-tls", self.argv, stdout=subprocess.DEVNULL,
                                           stop_signal=signal.SIGKILL)
        if not H.wait_port(self.port, 10, self.proc):
            raise RuntimeError("squid did not listen: %s %s" % (
                self.bench.procs.log_tail("squid-tls", 5), self.cache_log_tail()))

    def cache_log_tail(self, n=5):
        try:
            with open(os.path.join(self.dir, "cache.log"), errors="replace") as f:
                return " | ".join(f.read().splitlines()[-n:])
        except (OSError, TypeError):
            return ""

    def stop(self):
        """Idempotent; also run by Bench.cleanup on errors and Ctrl-C."""
        p, self.proc = self.proc, None
        if p is not None:
            if p.returncode is None:
                # not reaped yet, so its PID (= its process group, a session of
                # its own) cannot have been reused: kill squid and its helpers
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            self.bench.procs.stop(p)
        for f in glob.glob("/dev/shm/%s-*" % self.name):
            try:
                os.unlink(f)
            except OSError:
                pass
        if self.dir:
            try:
                shutil.copy(os.path.join(self.dir, "cache.log"),
                            os.path.join(self.bench.tmp, "squid-cache.log"))
            except OSError:
                pass
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


# --------------------------------------------------------------------------


def keygen(bench):
    d = os.path.join(bench.tmp, "tls")
    os.makedirs(d, mode=0o700, exist_ok=True)
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    argv = [bench.cfg.adit_bin, "keygen", "--cert", cert, "--key", key,
            "--name", "localhost", "--ip", H.HOST, "--force"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError("adit keygen failed (rc %d): %s" % (r.returncode, (r.stderr or r.stdout)[-300:]))
    m = re.search(r"pin: (sha256/\S+)", r.stdout + r.stderr)
    return cert, key, (m.group(1) if m else None), " ".join(argv)


def tput_fmt(r):
    s = H.fmt_gbps(r)
    if "relay_cpu_pct" in r:
        s += ", relay CPU %.0f%%" % r["relay_cpu_pct"]
    if "squid_cpu_pct" in r:
        s += " (squid %.0f%%)" % r["squid_cpu_pct"]
    return s


def suite_tls(bench, run_module):
    global H
    H = run_module
    c = bench.cfg
    res = bench.results["tls"]
    if "adit" not in c.paths:
        res["skipped"] = "adit not in BENCH_PATHS"
        return
    if not c.adit_available:
        res["skipped"] = "adit binary missing"
        return
    res["params"] = {"rounds": c.tls_rounds, "iperf_secs": c.iperf_secs, "iperf_omit_secs": 1,
                     "connect_n": c.connect_n, "connect_rounds": c.rounds,
                     "adit_compression": "off on both sides, except wss_auto (default: auto)",
                     "tls_trust": "--ca-file (the self-signed certificate from adit keygen)"}
    res["errors"] = {}
    if not getattr(bench, "echo_port", None):
        bench.start_targets()
    paths = {}
    squid = Squid(bench)
    try:
        cert, key, pin, kg_cmd = keygen(bench)
        res["pin"] = pin
        bench.commands["tls: adit keygen"] = kg_cmd
        tls_s = ["--tls-cert", cert, "--tls-key", key]
        tls_c = ["--ca-file", cert]
        off = ["--compression", "off"]
        # a proxy from the environment (https_proxy, all_proxy) must not sneak in
        specs = {
            "ws": dict(scheme="ws", server_args=off, client_args=off + ["--no-proxy"]),
            "wss": dict(scheme="wss", server_args=tls_s + off, client_args=tls_c + off + ["--no-proxy"]),
            "wss_squid": None,   # needs squid's port
            "wss_auto": dict(scheme="wss", server_args=tls_s, client_args=tls_c + ["--no-proxy"]),
        }
        try:
            squid.start()
            bench.commands["tls: squid"] = [" ".join(squid.argv),
                                            "squid.conf: " + squid_conf("DIR", squid.port).replace("\n", "; ")]
            specs["wss_squid"] = dict(scheme="wss", server_args=tls_s + off,
                                      client_args=tls_c + off + ["--proxy", "http://%s:%d" % (H.HOST, squid.port)])
        except Exception as e:
            res["errors"]["wss_squid"] = "%s: %s" % (type(e).__name__, e)
            bench.notes.append("tls: squid did not start: %s" % e)
            bench.failed = True
            H.log("  tls: squid failed: %s" % e)
            squid.stop()
        for key_ in ORDER:
            if key_ == "ssh":
                if "ssh" not in c.paths:
                    continue
                start = lambda: bench.start_path("ssh", tag="-tls")
            else:
                spec = specs.get(key_)
                if spec is None:
                    continue
                start = lambda spec=spec, key_=key_: bench.start_path("adit", tag="-tls-" + key_, **spec)
            try:
                p = start()
            except Exception as e:
                res["errors"][key_] = "%s: %s" % (type(e).__name__, e)
                bench.notes.append("tls: %s failed to start: %s" % (LABEL[key_], e))
                bench.failed = True
                H.log("  tls: %s failed to start: %s" % (key_, e))
                continue
            p.name = key_
            if key_ == "wss_squid":
                p.relay_pids.append(squid.proc.pid)   # squid relays every byte as well
            paths[key_] = p
            bench.commands["tls: " + LABEL[key_]] = p.commands
            H.log("  tls path %-9s ready: %s" % (key_, p.ports))

        # 1. single-stream throughput, the paths taking turns
        keys = [k for k in ORDER if k in paths]
        runs = {k: [] for k in keys}
        res["throughput"] = {}   # kept current after every round (an interrupted run keeps them)
        for rnd in range(c.tls_rounds):
            order = keys[rnd % len(keys):] + keys[:rnd % len(keys)] if keys else []
            for k in order:
                if bench.remaining() < c.iperf_secs + 25:
                    continue
                sq0 = H.tree_cpu_secs([squid.proc.pid]) if k == "wss_squid" and squid.proc else None
                t0 = time.monotonic()
                r = bench.run_iperf(paths[k], c.iperf_secs)
                if sq0 is not None:
                    r["squid_cpu_pct"] = 100.0 * (H.tree_cpu_secs([squid.proc.pid]) - sq0) / (
                        time.monotonic() - t0)
                r["round"] = rnd + 1
                runs[k].append(r)
                res["throughput"][k] = H.tput_summary(runs[k])
                H.log("  tls throughput %-9s round %d: %s" % (k, rnd + 1, tput_fmt(r)))
        for k in keys:
            res["throughput"][k] = H.tput_summary(runs[k])

        # 2. connect + first byte
        cpaths = {k: paths[k] for k in CONNECT_PATHS if k in paths}
        res["connect"] = {}
        if bench.remaining() < 20:
            res["connect"] = {k: {"error": "skipped: time budget"} for k in cpaths}
            bench.notes.append("tls: connect + first byte skipped: time budget")
        elif cpaths:
            bench.rounds("tls-conn", cpaths,
                         lambda path, n: ["connect", "--port", str(path.ports["echo"]), "--count", str(n)],
                         c.connect_n, c.loop_limit, out=res["connect"])
    finally:
        for p in reversed(list(paths.values())):
            bench.stop_path(p)
        squid.stop()


# --------------------------------------------------------------------------
# report


def report(bench, cfg):
    """(markdown, [(target, value, vfmt, goal, ok)])"""
    R = bench.results.get("tls") or {}
    goal = "≥ 1.2×"
    tname = "single-stream throughput adit wss:// / ssh -L"
    tg = lambda v: [(tname, v, "%.2f×", goal, lambda x: x >= 1.2)]
    if not cfg.adit_available or "adit" not in cfg.paths:
        state = "pending" if "adit" in cfg.paths else "not run"
        return "TLS: %s." % state, tg(None)
    if R.get("skipped"):
        return "TLS: skipped (%s)." % R["skipped"], tg(None)
    T, C, E = R.get("throughput") or {}, R.get("connect") or {}, R.get("errors") or {}
    cols = [k for k in ORDER if k != "ssh" or "ssh" in cfg.paths]

    def g(d, k, *ks):
        v = d.get(k)
        for x in ks:
            v = v.get(x) if isinstance(v, dict) else None
        return v

    def ratio(a, b):
        return None if a is None or not b else a / b

    def cell(d, k, key, fmt, na=False):
        if na:
            return "n/a"
        if k in E:
            return "failed"
        v = g(d, k, key)
        if v is None:
            err = g(d, k, "error")
            return "-" if not err else ("skipped" if "skipped" in err else "error")
        return fmt % v

    rounds = cfg.tls_rounds
    med = ", median of %d" % rounds if rounds > 1 else ""
    lines = ["| TLS, loopback (adit `--compression off` unless noted) | "
             + " | ".join(LABEL[k] for k in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    rows = [
        ("Throughput, 1 stream (Gbit/s%s)" % med, T, "gbps", "%.2f", ()),
        ("Relay CPU during 1 stream (% of one core)¹", T, "relay_cpu_pct", "%.0f", ()),
        ("1 stream, Gbit/s per relay CPU core%s" % med, T, "gbps_per_relay_core", "%.2f", ()),
        ("Connect + first byte p50 (µs)", C, "p50_us", "%.0f", ("wss_auto",)),
        ("Connect + first byte p99 (µs)", C, "p99_us", "%.0f", ("wss_auto",)),
    ]
    for label, d, key, fmt, na in rows:
        lines.append("| %s | %s |" % (label, " | ".join(cell(d, k, key, fmt, k in na) for k in cols)))

    def tp(k):
        return g(T, k, "gbps")

    notes = ["", "¹ adit client + server; ssh + the sshd tree; the squid column includes squid%s." % (
        " (%.0f %% of a core in the median round)" % g(T, "wss_squid", "squid_cpu_pct")
        if g(T, "wss_squid", "squid_cpu_pct") is not None else "")]
    info = []
    v = ratio(tp("wss"), tp("ws"))
    if v is not None:
        eff = ratio(g(T, "wss", "gbps_per_relay_core"), g(T, "ws", "gbps_per_relay_core"))
        info.append("cost of TLS, throughput wss:// / ws:// %.2f×%s" % (
            v, "" if eff is None else " (per relay CPU core %.2f×)" % eff))
    v = ratio(tp("wss_squid"), tp("wss"))
    if v is not None:
        info.append("through squid / direct (wss://) %.2f×" % v)
    v = ratio(tp("wss_auto"), tp("wss"))
    if v is not None:
        info.append("wss:// compression auto / off %.2f× (random payload)" % v)
    p_d, p_s = g(C, "wss", "p50_us"), g(C, "wss_squid", "p50_us")
    if p_d is not None and p_s is not None:
        info.append("connect p50 through squid %+.0f µs vs direct" % (p_s - p_d))
    if info:
        notes.append("- " + "; ".join(info) + ".")
    for k, e in E.items():
        notes.append("- %s: %s" % (LABEL[k], str(e)[:200]))
    return "\n".join(lines + notes), tg(ratio(tp("wss"), tp("ssh")))
