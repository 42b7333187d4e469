"""Fixtures and the per-test time guard for the Adit end-to-end tests.

Environment:
  ADIT_BIN                  path of the adit binary (default: <repo>/.build/release/adit)
  ADIT_E2E_LOG_LEVEL        --log-level passed to adit processes (default: info)
  ADIT_E2E_TIMEOUT_SCALE    multiply every time limit: the per-test deadlines here, and every bound a test waits
                            for or compares against (e2e_helpers.scaled) (default: 1)
  CI                        "true" (or 1, yes): a skipped test is a failure, unless it is marked
                            @pytest.mark.ci_may_skip(condition, reason=...) and the condition holds
"""

from __future__ import annotations

import faulthandler
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

import e2e_helpers as H

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / ".build" / "release" / "adit"
DEFAULT_DEADLINE = 60.0
HARD_GRACE = 30.0  # after the soft limit: dump stacks, kill processes, exit

PROCS_KEY = pytest.StashKey[list]()


def adit_bin_path() -> Path:
    return Path(os.environ.get("ADIT_BIN") or DEFAULT_BIN)


def log_level() -> str:
    return os.environ.get("ADIT_E2E_LOG_LEVEL", "info")


# ---------------------------------------------------------------------------
# Per-test time guard: SIGALRM raises in the main thread (so fixtures still
# clean up); a watchdog thread is the backstop if that does not unwind.


class TestTimeout(Exception):
    pass


_config = None


def pytest_configure(config):
    global _config
    _config = config
    config.addinivalue_line("markers", "deadline(seconds): time limit of a test (setup+call+teardown)")
    config.addinivalue_line("markers", "ci_may_skip(condition, reason): under CI=true a skip of this test is "
                                       "allowed (not a failure) when `condition` is true; reason says why no CI "
                                       "machine could run it then")


def _hard_abort(nodeid: str, secs: float) -> None:
    try:  # write to the real stderr, not to pytest's capture file
        capman = _config.pluginmanager.getplugin("capturemanager") if _config else None
        if capman is not None:
            capman.suspend_global_capture(in_=True)
    except Exception:
        pass
    sys.stderr.write(f"\n\n*** e2e watchdog: {nodeid} still running {HARD_GRACE}s after its "
                     f"{secs}s limit; dumping threads, killing adit processes, exiting ***\n")
    try:
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    except Exception:
        pass
    with H._live_lock:
        live = list(H._live_procs.values())
    for p in live:
        sys.stderr.write(f"killing {p.name} (pid {p.pid}); its log: {p.log_path}\n")
    H.kill_all_live_processes()
    sys.stderr.flush()
    os._exit(3)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    m = item.get_closest_marker("deadline")
    secs = float(m.args[0]) if m else DEFAULT_DEADLINE
    secs *= H.timeout_scale()

    def on_alarm(signum, frame):
        raise TestTimeout(f"{item.nodeid} exceeded its {secs:.0f}s time limit")

    use_alarm = threading.current_thread() is threading.main_thread()
    if use_alarm:
        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, secs)
    watchdog = threading.Timer(secs + HARD_GRACE, _hard_abort, args=(item.nodeid, secs))
    watchdog.daemon = True
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def pytest_sessionfinish(session, exitstatus):
    H.kill_all_live_processes()


# ---------------------------------------------------------------------------
# No silent skips in CI. About 30 cases skip when a peer is missing (squid, tinyproxy, a KDC, Chromium,
# websockify, OpenSSH, dnsmasq, root, IPv6); a green run would hide that. Under CI=true a skip is a failure,
# naming the skip's reason, unless the test carries @pytest.mark.ci_may_skip(condition, reason="...") and the
# condition holds: only for a reason that no CI machine can fix (not "X is not installed": ensure-deps.sh
# installs it). Outside CI the skips stay skips, listed by -ra (pytest.ini) in the short test summary.


def ci_mode() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _skip_allowed_in_ci(item) -> str | None:
    """The reason of the item's ci_may_skip marker when its condition holds, else None."""
    m = item.get_closest_marker("ci_may_skip")
    if m is None:
        return None
    condition = m.args[0] if m.args else m.kwargs.get("condition", True)
    reason = m.kwargs.get("reason") or (m.args[1] if len(m.args) > 1 else "")
    if not reason:
        raise pytest.UsageError(f"{item.nodeid}: ci_may_skip needs a reason")
    return reason if condition else None


def _skip_reason(rep) -> str:
    if isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3:
        return str(rep.longrepr[2]).removeprefix("Skipped: ")
    return str(rep.longrepr)


def _fail_skip_in_ci(item, rep) -> None:
    if not (rep.skipped and ci_mode()) or hasattr(rep, "wasxfail"):
        return
    if _skip_allowed_in_ci(item) is not None:
        return
    rep.outcome = "failed"
    rep.longrepr = (f"CI=true: this test skipped ({_skip_reason(rep)}), and in CI a skip is a failure. Install "
                    f"what it needs (Tests/e2e/ensure-deps.sh), or, only if no CI machine could ever run it, mark "
                    f"it @pytest.mark.ci_may_skip(condition, reason=...) (Tests/e2e/README.md).")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    skipped = terminalreporter.stats.get("skipped", [])
    tr = terminalreporter
    if ci_mode():
        failed = [r for r in tr.stats.get("failed", []) + tr.stats.get("error", [])
                  if isinstance(r.longrepr, str) and r.longrepr.startswith("CI=true: this test skipped")]
        tr.write_line(f"e2e skips (CI=true): {len(failed)} skipped test(s) counted as failures, "
                      f"{len(skipped)} skip(s) allowed by ci_may_skip")
    elif skipped:
        tr.write_line(f"e2e skips: {len(skipped)} test(s) skipped (listed above); with CI=true each would fail "
                      f"unless marked ci_may_skip")


# ---------------------------------------------------------------------------
# On failure, attach the logs of every adit process of the test to the report.


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    _fail_skip_in_ci(item, rep)
    if rep.failed:
        for proc in item.stash.get(PROCS_KEY, []):
            state = "running" if proc.alive() else f"exit code {proc.returncode}"
            rep.sections.append((f"{proc.name} (pid {proc.popen.pid if proc.popen else '-'}, {state}) "
                                 f"log {proc.log_path}", proc.log_tail()))


# ---------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="session")
def adit_bin() -> Path:
    p = adit_bin_path()
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"adit binary not found or not executable at {p}: build it with "
                    f"`swift build -c release` or set ADIT_BIN", pytrace=False)
    return p


@pytest.fixture(scope="session")
def blob() -> H.Blob:
    return H.Blob()


class Targets:
    """Factory for target servers; all stopped at teardown."""

    def __init__(self) -> None:
        self.servers: list[H.TargetServer] = []

    def _add(self, srv: H.TargetServer) -> H.TargetServer:
        self.servers.append(srv)
        return srv

    def echo(self, host: str = "127.0.0.1") -> H.TargetServer:
        return self._add(H.TargetServer("echo", H.echo_handler, host=host))

    def hash_sink(self, pace=None, rcvbuf: int | None = None) -> H.TargetServer:
        return self._add(H.TargetServer("sink", H.make_hash_sink_handler(pace), rcvbuf=rcvbuf))

    def source(self, blob: H.Blob, total: int, seed: int = 0) -> H.TargetServer:
        return self._add(H.TargetServer("source", H.make_source_handler(blob, total, seed)))

    def custom(self, name: str, handler, **kw) -> H.TargetServer:
        return self._add(H.TargetServer(name, handler, **kw))

    def stop_all(self) -> None:
        for s in self.servers:
            s.stop()


@pytest.fixture
def targets():
    t = Targets()
    yield t
    t.stop_all()


class Adit:
    """Starts adit servers and clients for one test; stops them all (by PID) at teardown."""

    def __init__(self, bin_path: Path, tmp: Path, node, targets: Targets):
        self.bin = str(bin_path)
        self.tmp = tmp
        self.node = node
        self.targets = targets
        self.procs: list[H.AditProcess] = []
        self.counter = 0
        node.stash[PROCS_KEY] = self.procs

    def _start(self, kind: str, args: list[str], log_level_arg: bool = True,
               env: dict[str, str] | None = None) -> H.AditProcess:
        self.counter += 1
        name = f"adit-{kind}-{self.counter}"
        argv = [self.bin, kind, *args]
        if log_level_arg and log_level():
            argv += ["--log-level", log_level()]
        proc = H.AditProcess(name, argv, self.tmp / f"{name}.log", env=env)
        self.procs.append(proc)
        return proc.start()

    def server(self, allow: list[str], port: int | None = None, wait: bool = True,
               extra: list[str] = ()) -> H.AditProcess:
        port = port or H.free_port()
        args = ["--listen", f"127.0.0.1:{port}"]
        for a in allow:
            args += ["--allow", a]
        proc = self._start("server", args + list(extra))
        proc.port = port
        proc.url = f"ws://127.0.0.1:{port}"
        if wait:
            H.wait_for_port(port, timeout=10, proc=proc, connect=False)
        return proc

    def client(self, url: str, forwards: list[tuple[int, str, int]], wait: bool = True,
               extra: list[str] = (), env: dict[str, str] | None = None) -> H.AditProcess:
        args = [url]
        for lport, host, hport in forwards:
            h = f"[{host}]" if ":" in host else host
            args += ["-L", f"127.0.0.1:{lport}:{h}:{hport}"]
        proc = self._start("client", args + list(extra), env=env)
        if wait:
            for lport, _, _ in forwards:   # no test connect: it would open a stream
                H.wait_for_port(lport, timeout=10, proc=proc, connect=False)
        return proc

    def tunnel(self, target_ports: list[int], allow: list[str] | None = None,
               extra_forwards: list[tuple[str, int]] = (), server_extra: list[str] = (),
               client_extra: list[str] = ()) -> "Tunnel":
        """Server + client with one forward per target port (to 127.0.0.1) plus a probe
        forward to an echo server; returns when an echo goes through the tunnel.
        `server_extra`/`client_extra`: more options for each process."""
        probe = self.targets.echo()
        fwd_targets = [("127.0.0.1", p) for p in target_ports] + list(extra_forwards)
        if allow is None:
            allow = [f"127.0.0.1:{p}" for p in target_ports]
        allow = allow + [f"127.0.0.1:{probe.port}"]
        server = self.server(allow, extra=server_extra)
        forwards = [(H.free_port(), h, p) for h, p in fwd_targets]
        probe_port = H.free_port()
        client = self.client(server.url, forwards + [(probe_port, "127.0.0.1", probe.port)], extra=client_extra)
        H.wait_tunnel_ready(probe_port, timeout=15, proc=client)
        return Tunnel(server, client, [f[0] for f in forwards], probe_port)

    def stop_all(self) -> list[str]:
        """Stop everything; return problems found (crash text in a log, death by a signal we did not send)."""
        problems = []
        for p in reversed(self.procs):
            rc_before = p.poll()
            p.stop()
            if rc_before is not None and rc_before < 0 and not p.killed_by_us:
                problems.append(f"{p.name} died by signal {-rc_before}")
            crash = p.crash_lines()
            if crash:
                problems.append(f"{p.name} printed crash text: {crash[:5]}")
        return problems


class Tunnel:
    def __init__(self, server: H.AditProcess, client: H.AditProcess, ports: list[int], probe_port: int):
        self.server = server
        self.client = client
        self.ports = ports
        self.probe_port = probe_port


@pytest.fixture
def adit(adit_bin, tmp_path, request, targets):
    a = Adit(adit_bin, tmp_path, request.node, targets)
    yield a
    problems = a.stop_all()
    if problems:
        pytest.fail("adit process problems: " + "; ".join(problems), pytrace=False)
