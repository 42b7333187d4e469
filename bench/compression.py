"""Compression suite of the Adit benchmark (BENCH_ONLY=compression), called
from bench/run.py; see docs/benchmarks.md.

Two payloads go through one stream of an adit tunnel (client -L -> one
WebSocket -> server -> sink), for `--compression off|auto|always` on both
sides:
  random   random bytes (a 64 MiB file, cycled), at most c.comp_random_bytes
           per transfer and c.comp_random_secs of sending
  jsonlog  a seeded JSON-log corpus (benchtool.json_log_corpus), sent exactly
           once per transfer, so `gzip -6` of the same bytes is the reference

Per transfer: payload throughput (sender connected -> sink's byte count
received), CPU of the adit client and server processes (process CPU clocks,
ns), bytes on the wire (the tunnel TCP connection's bytes_received on the
server side, from `ss -tinp`; bytes_acked on the client side as well) and the
sender's wire payload from adit's Prometheus counters
(adit_compression_bytes_total{stage="after"} + adit_compression_skipped_bytes_total).
The three tunnels run side by side and take turns, c.comp_rounds rounds, the
order of the modes rotating each round; medians are reported.

Then, over a veth pair between two network namespaces shaped to 100 Mbit/s
with tbf, the JSON corpus through adit with `off` and `auto` (and straight
to the sink, for the link's own rate).
"""

import os
import random
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request

MODES = ("off", "auto", "always")
PAYLOADS = ("random", "jsonlog")
PLABEL = {"random": "random", "jsonlog": "JSON logs"}
GiB = float(1 << 30)
METRICS_LAG = 1.5          # adit exports its counters once a second
RANDOM_FILE_BYTES = 64 << 20
SHAPED_RATE = "100mbit"
NET = "10.77.0"            # the namespaces' veth pair: .1 server side, .2 client side

H = None   # bench/run.py as a module (log, tree, free_port, wait_port, ...)


def cpu_clock_secs(pid):
    """CPU time of a whole process (all its threads, live or exited), from its
    POSIX CPU clock: ns resolution where /proc/PID/stat has 10 ms ticks."""
    try:
        return time.clock_gettime(((~pid) << 3) | 2)   # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED)
    except OSError:
        st = H.proc_stat(pid)
        return st[2] / H.CLK_TCK if st else 0.0


def tree_cpu(pids):
    return sum(cpu_clock_secs(p) for root in pids for p in H.tree(root))


def median(vals):
    v = sorted(x for x in vals if x is not None)
    return v[(len(v) - 1) // 2] if v else None


# --------------------------------------------------------------------------
# wire bytes: ss and Prometheus


def ss_bytes(port, side, pids, ns=None, ip="ip"):
    """Bytes counters of the established TCP sockets that belong to the process
    trees `pids`: side "server" = local port `port`, "client" = remote port
    `port`. Returns {"received", "acked", "sockets"} or None."""
    flt = "( sport = :%d )" % port if side == "server" else "( dport = :%d )" % port
    argv = ["ss", "-tinpH", "state", "established", flt]
    if ns:
        argv = [ip, "netns", "exec", ns] + argv
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    want = {str(p) for root in pids for p in H.tree(root)}
    entries, cur = [], []
    for line in out.splitlines():
        if line and not line[0].isspace() and cur:
            entries.append(" ".join(cur))
            cur = []
        cur.append(line)
    if cur:
        entries.append(" ".join(cur))
    res = {"received": 0, "acked": 0, "sockets": 0}
    for e in entries:
        if not (set(re.findall(r"pid=(\d+)", e)) & want):
            continue
        res["sockets"] += 1
        for key, field in (("received", "bytes_received"), ("acked", "bytes_acked")):
            m = re.search(r"\b%s:(\d+)" % field, e)
            if m:
                res[key] += int(m.group(1))
    return res if res["sockets"] else None


def scrape(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=3) as r:
            txt = r.read().decode()
    except OSError:
        return None
    vals = {}
    for line in txt.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, _, v = line.rpartition(" ")
        try:
            vals[name.replace(" ", "")] = float(v)
        except ValueError:
            pass
    return vals


def m_get(vals, key):
    return None if vals is None else vals.get(key, 0.0)


M_AFTER = 'adit_compression_bytes_total{stage="after"}'
M_BEFORE = 'adit_compression_bytes_total{stage="before"}'
M_SKIPPED = "adit_compression_skipped_bytes_total"


def m_wire(vals):
    if vals is None:
        return None
    return vals.get(M_AFTER, 0.0) + vals.get(M_SKIPPED, 0.0)


LOG_RE = re.compile(r"tunnel compression: sent (\d+) compressed message\(s\), (\d+) -> (\d+) bytes "
                    r"\(ratio [^)]*\), (\d+) uncompressed \((\d+) bytes\)")


def client_log_totals(bench, name):
    """The adit client's own account at tunnel close (last such line)."""
    try:
        with open(os.path.join(bench.tmp, name + ".log"), errors="replace") as f:
            hits = LOG_RE.findall(f.read())
    except OSError:
        return None
    if not hits:
        return None
    n, before, after, un, unb = (int(x) for x in hits[-1])
    return {"compressed_messages": n, "before": before, "after": after,
            "uncompressed_messages": un, "uncompressed_bytes": unb, "wire_payload": after + unb}


# --------------------------------------------------------------------------
# loopback tunnels


class Tunnel:
    def __init__(self, mode):
        self.mode = mode
        self.server = self.client = None
        self.sport = self.lport = self.msport = self.mcport = None
        self.cname = None
        self.commands = []
        self.last_end = 0.0
        self.m_last = None      # client metrics scrape that includes everything so far
        self.pending = None     # (result dict, metrics before) awaiting the lagging counters


def start_tunnel(bench, mode, sink_port):
    c = bench.cfg
    t = Tunnel(mode)
    t.sport, t.lport, t.msport, t.mcport = (H.free_port() for _ in range(4))
    flags = ["--compression", mode]
    argv_s = [c.adit_bin, "server", "--listen", "%s:%d" % (H.HOST, t.sport),
              "--allow", "%s:%d" % (H.HOST, sink_port), "--metrics", "%s:%d" % (H.HOST, t.msport)]
    argv_s += flags + shlex.split(os.environ.get("ADIT_SERVER_ARGS", ""))
    t.server = bench.procs.start("adit-server-comp-" + mode, argv_s)
    if not H.wait_port(t.sport, 15, t.server):
        raise RuntimeError("adit server (%s) did not listen: %s" % (
            mode, bench.procs.log_tail("adit-server-comp-" + mode)))
    argv_c = [c.adit_bin, "client", "ws://%s:%d/" % (H.HOST, t.sport), "--no-proxy",
              "-L", "%s:%d:%s:%d" % (H.HOST, t.lport, H.HOST, sink_port),
              "--metrics", "%s:%d" % (H.HOST, t.mcport)]
    argv_c += flags + shlex.split(os.environ.get("ADIT_CLIENT_ARGS", ""))
    t.cname = "adit-client-comp-" + mode
    t.client = bench.procs.start(t.cname, argv_c)
    if not H.wait_port(t.lport, 15, t.client):
        raise RuntimeError("adit client (%s) did not listen: %s" % (mode, bench.procs.log_tail(t.cname)))
    t.commands = [" ".join(shlex.quote(a) for a in argv_s), " ".join(shlex.quote(a) for a in argv_c)]
    return t


def metrics_now(t):
    """A client scrape that includes everything sent up to t.last_end."""
    wait = t.last_end + METRICS_LAG - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    return scrape(t.mcport)


def settle(t):
    """Fill in the pending transfer's metrics delta; leaves t.m_last current."""
    if t.pending is None and t.m_last is not None:
        return
    m = metrics_now(t)
    if t.pending is not None:
        res, m0 = t.pending
        if m is not None and m0 is not None:
            res["wire_metrics"] = m_wire(m) - m_wire(m0)
            res["metrics_before_compression"] = m_get(m, M_BEFORE) - m_get(m0, M_BEFORE)
        t.pending = None
    t.m_last = m


def blast(bench, port, path, nbytes=0, secs=0.0, host=None, prefix=(), connect_timeout=5.0):
    args = ["blast", "--port", str(port), "--file", path]
    if host:
        args += ["--host", host]
    if nbytes:
        args += ["--bytes", str(nbytes)]
    if secs:
        args += ["--time-limit", str(secs)]
    args += ["--connect-timeout", str(connect_timeout)]
    size = nbytes or os.path.getsize(path)
    # bounded: at least 2 MB/s, plus slack
    timeout = (secs or size / 2e6) + 60
    return bench.tool_json(args, timeout, prefix=prefix)


def transfer(bench, t, path, nbytes, secs):
    settle(t)
    m0 = t.m_last
    srv0 = ss_bytes(t.sport, "server", [t.server.pid])
    cli0 = ss_bytes(t.sport, "client", [t.client.pid])
    cc0, cs0 = tree_cpu([t.client.pid]), tree_cpu([t.server.pid])
    r = blast(bench, t.lport, path, nbytes, secs)
    cc1, cs1 = tree_cpu([t.client.pid]), tree_cpu([t.server.pid])
    srv1 = ss_bytes(t.sport, "server", [t.server.pid])
    cli1 = ss_bytes(t.sport, "client", [t.client.pid])
    t.last_end = time.monotonic()
    r["cpu_client_s"] = cc1 - cc0
    r["cpu_server_s"] = cs1 - cs0
    if r.get("bytes"):
        r["cpu_s_per_gib"] = (r["cpu_client_s"] + r["cpu_server_s"]) / (r["bytes"] / GiB)
        r["cpu_client_s_per_gib"] = r["cpu_client_s"] / (r["bytes"] / GiB)
        r["cpu_server_s_per_gib"] = r["cpu_server_s"] / (r["bytes"] / GiB)
    if srv0 and srv1:
        r["wire_ss"] = srv1["received"] - srv0["received"]
    if cli0 and cli1:
        r["wire_ss_client_acked"] = cli1["acked"] - cli0["acked"]
    if r.get("bytes") and r.get("wire_ss") is not None:
        r["wire_ratio"] = r["wire_ss"] / r["bytes"]
    t.pending = (r, m0)
    return r


def make_payloads(bench):
    c = bench.cfg
    if H.HERE not in sys.path:
        sys.path.insert(0, H.HERE)
    from benchtool import json_log_corpus
    rnd = os.path.join(bench.tmp, "random.bin")
    with open(rnd, "wb") as f:
        f.write(random.Random(1).randbytes(RANDOM_FILE_BYTES))
    t0 = time.monotonic()
    data = json_log_corpus(c.comp_corpus_bytes)
    gen_secs = time.monotonic() - t0
    corpus = os.path.join(bench.tmp, "jsonlog.ndjson")
    with open(corpus, "wb") as f:
        f.write(data)
    lines = data.count(b"\n")
    del data
    t0 = time.monotonic()
    p = subprocess.Popen(["gzip", "-6", "-c", corpus], stdout=subprocess.PIPE)
    gz = 0
    while True:
        b = p.stdout.read(1 << 20)
        if not b:
            break
        gz += len(b)
    p.wait()
    gz_secs = time.monotonic() - t0
    info = {"random": {"file": rnd, "file_bytes": RANDOM_FILE_BYTES, "seed": 1,
                       "per_transfer": "up to %d bytes or %.1f s of sending" % (
                           c.comp_random_bytes, c.comp_random_secs)},
            "jsonlog": {"file": corpus, "bytes": c.comp_corpus_bytes, "lines": lines,
                        "seed": 20261126, "generate_secs": round(gen_secs, 2),
                        "gzip6_bytes": gz if p.returncode == 0 else None,
                        "gzip6_secs": round(gz_secs, 2),
                        "gzip6_ratio": (c.comp_corpus_bytes / gz) if gz else None,
                        "per_transfer": "the whole corpus, once"}}
    return rnd, corpus, info


def run_loopback(bench, res, rnd, corpus):
    c = bench.cfg
    out = res["loopback"] = {}
    sink = bench.procs.start("sink-comp", [bench.py, H.TOOL, "sink"], stdout=subprocess.PIPE)
    line = sink.stdout.readline().strip()
    if not line:
        raise RuntimeError("sink did not start: " + bench.procs.log_tail("sink-comp"))
    sink_port = int(line)
    bench.commands["compression sink"] = "python3 bench/benchtool.py sink  (thread per connection, 127.0.0.1)"
    tunnels = {}
    try:
        for mode in MODES:
            tunnels[mode] = start_tunnel(bench, mode, sink_port)
            bench.commands["adit --compression %s" % mode] = tunnels[mode].commands
        for mode, t in tunnels.items():   # warm-up, and a check the path works
            w = blast(bench, t.lport, corpus, 2 << 20, 0, connect_timeout=15)
            if "error" in w:
                raise RuntimeError("warm-up through adit --compression %s: %s; client log: %s" % (
                    mode, w["error"], bench.procs.log_tail(t.cname, 2)))
            t.last_end = time.monotonic()
        bench.commands["compression sender"] = [
            "python3 bench/benchtool.py blast --port LPORT --file RANDOM64M --bytes %d --time-limit %s"
            % (c.comp_random_bytes, c.comp_random_secs),
            "python3 bench/benchtool.py blast --port LPORT --file CORPUS   # whole corpus, sendfile(2)"]
        runs = {(m, p): [] for m in MODES for p in PAYLOADS}
        for rnd_i in range(c.comp_rounds):
            order = MODES[rnd_i % 3:] + MODES[:rnd_i % 3]
            for payload in PAYLOADS:
                for mode in order:
                    if bench.remaining() < 45:
                        res.setdefault("skipped", []).append("round %d %s %s: time budget" % (
                            rnd_i + 1, payload, mode))
                        continue
                    if payload == "random":
                        r = transfer(bench, tunnels[mode], rnd, c.comp_random_bytes,
                                     c.comp_random_secs)
                    else:
                        r = transfer(bench, tunnels[mode], corpus, 0, 0)
                    r["round"] = rnd_i + 1
                    runs[(mode, payload)].append(r)
                    H.log("  compression %-6s %-9s round %d: %s" % (mode, PLABEL[payload], rnd_i + 1, fmt(r)))
        for t in tunnels.values():
            settle(t)
        # cross-check: final counters, then the client's own account at close
        cross = res["crosscheck"] = {}
        for mode, t in tunnels.items():
            cli = ss_bytes(t.sport, "client", [t.client.pid])
            m = t.m_last
            t0 = time.monotonic()
            bench.procs.stop(t.client)
            lg = client_log_totals(bench, t.cname)
            cross[mode] = {"log": lg, "metrics_wire_payload": m_wire(m),
                           "metrics_before": m_get(m, M_BEFORE),
                           "ss_client_bytes_acked_total": cli["acked"] if cli else None,
                           "client_stop_secs": round(time.monotonic() - t0, 3),
                           "client_exit_code": t.client.returncode}
            if t.client.returncode not in (0, None) or time.monotonic() - t0 > 2.5:
                bench.notes.append("compression %s: the adit client took %.1f s to stop on SIGTERM "
                                   "(exit code %s)" % (mode, time.monotonic() - t0, t.client.returncode))
            if lg and m is not None:
                d = abs(lg["wire_payload"] - m_wire(m)) / max(1.0, lg["wire_payload"])
                cross[mode]["log_vs_metrics_rel_diff"] = d
                if d > 0.005:
                    bench.notes.append("compression %s: the client's log says %d wire payload bytes, its "
                                       "metrics %d" % (mode, lg["wire_payload"], m_wire(m)))
        for (mode, payload), rs in runs.items():
            out.setdefault(mode, {})[payload] = summarize(rs)
    finally:
        for t in tunnels.values():
            for p in (t.client, t.server):
                if p is not None:
                    bench.procs.stop(p)
        bench.procs.stop(sink)


def summarize(rs):
    good = [r for r in rs if "error" not in r and r.get("bytes")]
    if not good:
        return {"error": (rs[0].get("error") if rs else "skipped: time budget"), "rounds": rs}
    by = sorted(good, key=lambda r: r["gbps"])
    rep = by[(len(by) - 1) // 2]
    return {
        "gbps": median(r["gbps"] for r in good),
        "cpu_s_per_gib": median(r.get("cpu_s_per_gib") for r in good),
        "cpu_client_s_per_gib": median(r.get("cpu_client_s_per_gib") for r in good),
        "cpu_server_s_per_gib": median(r.get("cpu_server_s_per_gib") for r in good),
        "bytes": rep["bytes"], "wire_ss": rep.get("wire_ss"),
        "wire_ss_client_acked": rep.get("wire_ss_client_acked"),
        "wire_metrics": rep.get("wire_metrics"), "wire_ratio": rep.get("wire_ratio"),
        "time_limited": rep.get("time_limited"),
        "sender_cpu_pct": median(r.get("sender_cpu_pct") for r in good),
        "sink_cpu_pct": median(r.get("sink_cpu_pct") for r in good),
        "rounds_gbps": [round(r.get("gbps", 0), 3) for r in rs],
        "rounds_cpu_s_per_gib": [round(r["cpu_s_per_gib"], 3) if r.get("cpu_s_per_gib") else None
                                 for r in rs],
        "rounds_wire_ss": [r.get("wire_ss") for r in rs],
        "errors": len(rs) - len(good),
        "rounds": rs,
    }


def fmt(r):
    if "error" in r:
        return "error: %s" % r["error"]
    s = "%.2f Gbit/s" % r["gbps"]
    if r.get("cpu_s_per_gib") is not None:
        s += ", %.2f CPU s/GiB" % r["cpu_s_per_gib"]
    if r.get("wire_ratio") is not None:
        s += ", wire %.3f of %d B" % (r["wire_ratio"], r["bytes"])
    return s


# --------------------------------------------------------------------------
# 100 Mbit/s link between two network namespaces


def run_shaped(bench, res, corpus):
    c = bench.cfg
    out = res["shaped"] = {}
    if not c.comp_shaped:
        out["skipped"] = "BENCH_SHAPED=0"
        return
    ip = shutil.which("ip") or "/usr/sbin/ip"
    tc = shutil.which("tc") or "/usr/sbin/tc"
    why = None
    if os.geteuid() != 0:
        why = "not root (network namespaces need CAP_NET_ADMIN)"
    elif not (os.access(ip, os.X_OK) and os.access(tc, os.X_OK)):
        why = "ip or tc (iproute2) not found"
    elif shutil.which("ss") is None:
        why = "ss (iproute2) not found"
    else:
        try:
            if subprocess.run([ip, "netns", "list"], capture_output=True, timeout=10).returncode != 0:
                why = "`ip netns` does not work here"
        except (OSError, subprocess.TimeoutExpired) as e:
            why = "`ip netns` failed: %s" % e
    if why:
        out["skipped"] = why
        bench.notes.append("compression over a 100 Mbit/s link skipped: " + why)
        H.log("  100 Mbit/s part skipped: " + why)
        return
    if bench.remaining() < 40:
        out["skipped"] = "time budget"
        bench.notes.append("compression over a 100 Mbit/s link skipped: time budget")
        return
    remove_stale_namespaces(ip)
    tag = str(os.getpid())
    nss, nsc = "adit-bench-%s-srv" % tag, "adit-bench-%s-cli" % tag
    vs, vc = "abs%s" % tag, "abc%s" % tag
    sip, cip = NET + ".1", NET + ".2"
    created = []
    started = []
    setup_cmds = [
        [ip, "netns", "add", nss],
        [ip, "netns", "add", nsc],
        [ip, "-n", nss, "link", "add", vs, "type", "veth", "peer", "name", vc, "netns", nsc],
        [ip, "-n", nss, "addr", "add", sip + "/24", "dev", vs],
        [ip, "-n", nsc, "addr", "add", cip + "/24", "dev", vc],
        [ip, "-n", nss, "link", "set", "lo", "up"],
        [ip, "-n", nsc, "link", "set", "lo", "up"],
        [ip, "-n", nss, "link", "set", vs, "up"],
        [ip, "-n", nsc, "link", "set", vc, "up"],
        [tc, "-n", nss, "qdisc", "add", "dev", vs, "root", "tbf", "rate", SHAPED_RATE,
         "burst", "32kbit", "latency", "50ms"],
        [tc, "-n", nsc, "qdisc", "add", "dev", vc, "root", "tbf", "rate", SHAPED_RATE,
         "burst", "32kbit", "latency", "50ms"],
    ]
    out["setup"] = [" ".join(a) for a in setup_cmds]
    ex_s, ex_c = [ip, "netns", "exec", nss], [ip, "netns", "exec", nsc]
    try:
        for argv in setup_cmds:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=15)
            if argv[1:3] == ["netns", "add"] and r.returncode == 0:
                created.append(argv[3])
            if r.returncode != 0:
                raise RuntimeError("%s: %s" % (" ".join(argv), r.stderr.strip()))
        sink = bench.procs.start("sink-shaped", ex_s + [bench.py, H.TOOL, "sink", "--host", sip],
                                 stdout=subprocess.PIPE)
        started.append(sink)
        line = sink.stdout.readline().strip()
        if not line:
            raise RuntimeError("sink in %s did not start: %s" % (nss, bench.procs.log_tail("sink-shaped")))
        sink_port = int(line)
        # the link itself, without a tunnel
        d = blast(bench, sink_port, corpus, 0, 3.0 if not c.quick else 1.5, host=sip, prefix=ex_c,
                  connect_timeout=10)
        out["direct"] = d
        H.log("  100 Mbit/s direct (no tunnel): %s" % shaped_fmt(d))
        for i, mode in enumerate(("off", "auto", "always")):
            if bench.remaining() < 30:
                out[mode] = {"error": "skipped: time budget"}
                continue
            sport, lport = 8080 + i, 7000 + i
            name_s, name_c = "adit-server-shaped-" + mode, "adit-client-shaped-" + mode
            argv_s = [c.adit_bin, "server", "--listen", "%s:%d" % (sip, sport),
                      "--allow", "%s:%d" % (sip, sink_port), "--compression", mode]
            argv_s += shlex.split(os.environ.get("ADIT_SERVER_ARGS", ""))
            ps = bench.procs.start(name_s, ex_s + argv_s)
            started.append(ps)
            if not ns_listening(ip, nss, sport, 15, ps):
                raise RuntimeError("adit server in %s did not listen: %s" % (nss, bench.procs.log_tail(name_s)))
            argv_c = [c.adit_bin, "client", "ws://%s:%d/" % (sip, sport), "--no-proxy",
                      "-L", "127.0.0.1:%d:%s:%d" % (lport, sip, sink_port), "--compression", mode]
            argv_c += shlex.split(os.environ.get("ADIT_CLIENT_ARGS", ""))
            pc = bench.procs.start(name_c, ex_c + argv_c)
            started.append(pc)
            bench.commands["100 Mbit/s, adit --compression %s" % mode] = [
                " ".join(shlex.quote(a) for a in ex_s + argv_s),
                " ".join(shlex.quote(a) for a in ex_c + argv_c)]
            w = blast(bench, lport, corpus, 1 << 20, 0, prefix=ex_c, connect_timeout=15)
            if "error" in w:
                raise RuntimeError("warm-up through the shaped adit (%s): %s; %s" % (
                    mode, w["error"], bench.procs.log_tail(name_c)))
            srv0 = ss_bytes(sport, "server", [ps.pid], ns=nss, ip=ip)
            cli0 = ss_bytes(sport, "client", [pc.pid], ns=nsc, ip=ip)
            cc0, cs0 = tree_cpu([pc.pid]), tree_cpu([ps.pid])
            r = blast(bench, lport, corpus, 0, 0, prefix=ex_c)
            cc1, cs1 = tree_cpu([pc.pid]), tree_cpu([ps.pid])
            srv1 = ss_bytes(sport, "server", [ps.pid], ns=nss, ip=ip)
            cli1 = ss_bytes(sport, "client", [pc.pid], ns=nsc, ip=ip)
            r["cpu_client_s"], r["cpu_server_s"] = cc1 - cc0, cs1 - cs0
            if r.get("bytes"):
                r["cpu_s_per_gib"] = (r["cpu_client_s"] + r["cpu_server_s"]) / (r["bytes"] / GiB)
            if srv0 and srv1:
                r["wire_ss"] = srv1["received"] - srv0["received"]
            if cli0 and cli1:
                r["wire_ss_client_acked"] = cli1["acked"] - cli0["acked"]
            if r.get("bytes") and r.get("wire_ss") is not None:
                r["wire_ratio"] = r["wire_ss"] / r["bytes"]
            bench.procs.stop(pc)
            bench.procs.stop(ps)
            r["client_log"] = client_log_totals(bench, name_c)
            out[mode] = r
            H.log("  100 Mbit/s adit --compression %-4s: %s" % (mode, shaped_fmt(r)))
    except Exception as e:
        out["error"] = "%s: %s" % (type(e).__name__, e)
        bench.notes.append("compression over a 100 Mbit/s link failed: %s" % out["error"])
        H.log("  100 Mbit/s part failed: %s" % out["error"])
    finally:
        for p in reversed(started):
            bench.procs.stop(p)
        for ns in reversed(created):
            subprocess.run([ip, "netns", "del", ns], capture_output=True, timeout=15)
        left = subprocess.run([ip, "netns", "list"], capture_output=True, text=True, timeout=10).stdout
        if nss in left or nsc in left:
            bench.notes.append("could not delete network namespaces %s %s" % (nss, nsc))


def remove_stale_namespaces(ip):
    """Namespaces an earlier run left behind (it was killed with SIGKILL): ours
    are named adit-bench-PID-srv/-cli; delete those whose PID is gone."""
    try:
        names = subprocess.run([ip, "netns", "list"], capture_output=True, text=True,
                               timeout=10).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        return
    for name in names:
        m = re.fullmatch(r"adit-bench-(\d+)-(srv|cli)", name)
        if m and not os.path.exists("/proc/%s" % m.group(1)):
            H.log("  removing network namespace %s left by an earlier run" % name)
            subprocess.run([ip, "netns", "del", name], capture_output=True, timeout=15)


def ns_listening(ip, ns, port, timeout, proc):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        r = subprocess.run([ip, "netns", "exec", ns, "ss", "-tlnH", "( sport = :%d )" % port],
                           capture_output=True, text=True, timeout=10)
        if r.stdout.strip():
            return True
        time.sleep(0.05)
    return False


def shaped_fmt(r):
    if "error" in r:
        return "error: %s" % r["error"]
    s = "%.1f Mbit/s (%d B in %.2f s)" % (r["gbps"] * 1000, r["bytes"], r["secs"])
    if r.get("wire_ratio") is not None:
        s += ", wire %.3f" % r["wire_ratio"]
    return s


# --------------------------------------------------------------------------


def suite_compression(bench, run_module):
    global H
    H = run_module
    c = bench.cfg
    res = bench.results["compression"]
    if "adit" not in c.paths:
        res["skipped"] = "adit not in BENCH_PATHS"
        return
    if not c.adit_available:
        res["skipped"] = "adit binary missing"
        return
    if shutil.which("gzip") is None or shutil.which("ss") is None:
        bench.notes.append("compression: gzip or ss missing; those columns stay empty")
    rnd, corpus, info = make_payloads(bench)
    res["payloads"] = info
    res["params"] = {"rounds": c.comp_rounds, "random_bytes_cap": c.comp_random_bytes,
                     "random_send_secs_cap": c.comp_random_secs,
                     "corpus_bytes": c.comp_corpus_bytes, "metrics_lag_secs": METRICS_LAG,
                     "shaped_rate": SHAPED_RATE, "shaped_tbf": "burst 32kbit latency 50ms, both ends"}
    H.log("  payloads: random %d MiB file (cycled); JSON logs %d MiB, %d lines, gzip -6 %d B (%.2fx, %.1f s)" % (
        RANDOM_FILE_BYTES >> 20, c.comp_corpus_bytes >> 20, info["jsonlog"]["lines"],
        info["jsonlog"]["gzip6_bytes"] or 0, info["jsonlog"]["gzip6_ratio"] or 0,
        info["jsonlog"]["gzip6_secs"]))
    try:
        run_loopback(bench, res, rnd, corpus)
    except Exception as e:
        res["error"] = "%s: %s" % (type(e).__name__, e)
        bench.notes.append("compression (loopback) failed: %s" % res["error"])
        bench.failed = True
        H.log("  compression failed: %s" % res["error"])
    run_shaped(bench, res, corpus)
    for p in (rnd, corpus):
        try:
            os.unlink(p)
        except OSError:
            pass


# --------------------------------------------------------------------------
# report


def report(bench, cfg):
    """(markdown tables, [(target, value, shown, goal, pass)])"""
    R = bench.results.get("compression") or {}
    if not cfg.adit_available or "adit" not in cfg.paths:
        state = "pending" if "adit" in cfg.paths else "not run"
        return "Compression: %s." % state, []
    gz = ((R.get("payloads") or {}).get("jsonlog") or {}).get("gzip6_bytes")
    lb = R.get("loopback") or {}

    def g(mode, payload, k):
        return ((lb.get(mode) or {}).get(payload) or {}).get(k)

    def f(v, fmt):
        return "-" if v is None else fmt % v

    rounds = cfg.comp_rounds
    med = ", median of %d" % rounds if rounds > 1 else ""
    def ratio(a, b):
        return None if a is None or not b else a / b

    def cpu_cell(tot, cl, sv):
        if tot is None:
            return "-"
        if cl is None or sv is None:
            return "%.2f" % tot
        return "%.2f (%.2f + %.2f)" % (tot, cl, sv)

    lines = ["| Compression, 1 stream through adit (loopback) | Gbit/s%s | CPU s/GiB, client + server "
             "| payload bytes | wire bytes (ss) | wire / payload | wire / gzip -6 | wire payload (metrics) |" % med,
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for payload in PAYLOADS:
        for mode in MODES:
            if g(mode, payload, "error"):
                lines.append("| %s, `%s` | error: %s | | | | | | |" % (
                    PLABEL[payload], mode, str(g(mode, payload, "error"))[:80]))
                continue
            wire = g(mode, payload, "wire_ss")
            lines.append("| %s, `%s` | %s | %s | %s | %s | %s | %s | %s |" % (
                PLABEL[payload], mode, f(g(mode, payload, "gbps"), "%.2f"),
                cpu_cell(g(mode, payload, "cpu_s_per_gib"), g(mode, payload, "cpu_client_s_per_gib"),
                         g(mode, payload, "cpu_server_s_per_gib")),
                f(g(mode, payload, "bytes"), "%d"), f(wire, "%d"),
                f(g(mode, payload, "wire_ratio"), "%.3f"),
                f(wire / gz if (payload == "jsonlog" and wire and gz) else None, "%.2f×"),
                "n/a¹" if mode == "off" and not g(mode, payload, "wire_metrics")
                else f(g(mode, payload, "wire_metrics"), "%d")))
    if gz:
        lines.append("| JSON logs, `gzip -6` of the same bytes (reference) | | | %d | %d | %.3f | 1.00× | |" % (
            cfg.comp_corpus_bytes, gz, gz / cfg.comp_corpus_bytes))
    lines += ["", "- Wire bytes (ss): what the tunnel's TCP connection carried client → server during the "
              "transfer (the server socket's bytes_received delta; WebSocket and mux framing included).",
              "- Wire payload (metrics): the client's `adit_compression_bytes_total{stage=\"after\"}` + "
              "`adit_compression_skipped_bytes_total` delta. "
              "¹ With `off` nothing is negotiated and adit leaves those counters at 0."]
    snd = [g(m, p, "sender_cpu_pct") for m in MODES for p in PAYLOADS]
    snk = [g(m, p, "sink_cpu_pct") for m in MODES for p in PAYLOADS]
    snd, snk = [x for x in snd if x is not None], [x for x in snk if x is not None]
    if snd and snk:
        lines.append("- The sender (`sendfile`) used at most %.0f %% of a core while sending, the sink "
                     "at most %.0f %% (medians per row)." % (max(snd), max(snk)))
    # steadier views of auto vs off on random data than the ratio of medians
    pair = {}
    for mode in ("off", "auto"):
        for r in ((lb.get(mode) or {}).get("random") or {}).get("rounds") or []:
            if "error" not in r and r.get("gbps"):
                pair.setdefault(r["round"], {})[mode] = r["gbps"]
    paired = median(v["auto"] / v["off"] for v in pair.values() if len(v) == 2)
    cpu_ratio = ratio(g("auto", "random", "cpu_s_per_gib"), g("off", "random", "cpu_s_per_gib"))
    if paired is not None and cpu_ratio is not None:
        lines.append("- Random data, `auto` / `off`: throughput %.2f× as the median of per-round ratios "
                     "(the target below uses the ratio of medians), CPU per GiB %.2f×." % (paired, cpu_ratio))
    md = "\n".join(lines)

    sh = R.get("shaped") or {}
    if sh.get("skipped") or (sh.get("error") and not any(k in sh for k in ("direct", "off", "auto"))):
        md += "\n\n100 Mbit/s link: %s." % ("skipped (%s)" % sh["skipped"] if sh.get("skipped")
                                            else "failed (%s)" % sh["error"])
    elif sh:
        sl = ["| JSON logs over a 100 Mbit/s link (veth + tbf) | Mbit/s of payload | payload bytes "
              "| wire bytes (ss) | wire / payload | CPU s/GiB, client + server |",
              "|---|---:|---:|---:|---:|---:|"]
        for key, label in (("direct", "direct, no tunnel (the link's rate)"),
                           ("off", "adit `off`"), ("auto", "adit `auto`"),
                           ("always", "adit `always` (level 5 throughout)")):
            r = sh.get(key) or {}
            if "error" in r or not r:
                sl.append("| %s | %s | | | | |" % (label, "error: %s" % str(r.get("error"))[:80] if r else "-"))
                continue
            sl.append("| %s | %s | %s | %s | %s | %s |" % (
                label, f(r.get("gbps") and r["gbps"] * 1000, "%.1f"), f(r.get("bytes"), "%d"),
                f(r.get("wire_ss"), "%d"), f(r.get("wire_ratio"), "%.3f"),
                cpu_cell(r.get("cpu_s_per_gib"), r.get("cpu_client_s") and r["cpu_client_s"] / (r["bytes"] / GiB),
                         r.get("cpu_server_s") and r["cpu_server_s"] / (r["bytes"] / GiB))))
        md += "\n\n" + "\n".join(sl)
        if sh.get("error"):
            md += "\n\n100 Mbit/s link: %s" % sh["error"]

    # Issue 10: `auto` adapts to the link, so on loopback it must not cost throughput on any data (it then
    # sends compressible data mostly uncompressed: its wire bytes are no longer a target, `always`'s are).
    tg = []
    for payload, label in (("random", "random data"), ("jsonlog", "JSON logs")):
        tg.append(("loopback, %s: throughput `auto` / `off`" % label,
                   ratio(g("auto", payload, "gbps"), g("off", payload, "gbps")), "%.3f×", "≥ 0.95×",
                   lambda v: v >= 0.95))
    tg.append(("JSON logs: wire bytes `always` / gzip -6",
               ratio(g("always", "jsonlog", "wire_ss"), gz), "%.2f×", "≤ 1.1×", lambda v: v <= 1.1))
    if not sh.get("skipped"):
        tg.append(("JSON logs over 100 Mbit/s: throughput `auto` / `off`",
                   ratio((sh.get("auto") or {}).get("gbps"), (sh.get("off") or {}).get("gbps")),
                   "%.2f×", "≥ 4.5×", lambda v: v >= 4.5))
        tg.append(("JSON logs over 100 Mbit/s: throughput `always` (fixed level 5) / `off`",
                   ratio((sh.get("always") or {}).get("gbps"), (sh.get("off") or {}).get("gbps")),
                   "%.2f×", "(reference)", lambda v: True))
    return md, tg
