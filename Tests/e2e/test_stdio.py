"""--stdio: one stream on standard input and output. A real OpenSSH login with `adit client URL --stdio %h:%p` as
ssh's ProxyCommand to a private sshd on loopback; EOF carried both ways; exit status 0 when the stream ended
cleanly, 1 with a one-line reason on standard error when it was refused."""

from __future__ import annotations

import os
import select
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

import e2e_helpers as H

MiB = H.MiB
SSHD = "/usr/sbin/sshd"


# ---------------------------------------------------------------------------------------------------------
# Helpers


class StdioClient(H.AditProcess):
    """`adit client URL --stdio HOST:PORT` with its standard input and output as pipes of the test; standard
    error goes to the log file (after the `###` command line)."""

    def start(self) -> "StdioClient":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            log.write(f"### {' '.join(self.argv)}\n".encode())
        with open(self.log_path, "ab") as log:
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                          start_new_session=True, env={**env, **self.env})
        with H._live_lock:
            H._live_procs[self.popen.pid] = self
        return self

    def stderr_lines(self) -> list[str]:
        return [ln for ln in self.log_text().splitlines()[1:] if ln.strip()]


def stdio(adit, url: str, target: str, extra=()) -> StdioClient:
    """Start a --stdio client (default log level: what ssh users see); stopped by PID at teardown."""
    adit.counter += 1
    name = f"adit-stdio-{adit.counter}"
    proc = StdioClient(name, [adit.bin, "client", url, "--stdio", target, *extra], adit.tmp / f"{name}.log")
    adit.procs.append(proc)
    return proc.start()


def read_until(proc: StdioClient, done, timeout: float) -> bytes:
    """Read the client's standard output until done(data) or EOF; fail after `timeout` seconds (scaled)."""
    timeout = H.scaled(timeout)
    fd = proc.popen.stdout.fileno()
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{proc.name}: after {timeout}s standard output has {data[:200]!r}; "
                                 f"stderr: {proc.stderr_lines()[-5:]}")
        if select.select([fd], [], [], left)[0]:
            b = os.read(fd, 1 * MiB)
            if not b:
                return data
            data += b
    return data


def wait_exit(proc: StdioClient, timeout: float) -> int:
    """The exit code, once the process exits within `timeout` seconds (scaled)."""
    timeout = H.scaled(timeout)
    try:
        return proc.popen.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{proc.name} still running {timeout}s later; stderr: {proc.stderr_lines()[-5:]}") from None


def greeting_hash_sink(conn: socket.socket, server: H.TargetServer) -> tuple[int, str]:
    """Say "ready", then read to EOF and answer "COUNT SHA256"; so the test knows the stream is open."""
    conn.sendall(b"ready\n")
    return H.make_hash_sink_handler()(conn, server)


# ---------------------------------------------------------------------------------------------------------
# EOF both ways, exit status


@pytest.mark.deadline(30)
def test_stdin_eof_after_the_stream_opened(adit, targets, blob):
    sink = targets.custom("greeting-sink", greeting_hash_sink)
    server = adit.server([f"127.0.0.1:{sink.port}"])
    p = stdio(adit, server.url, f"127.0.0.1:{sink.port}")
    assert read_until(p, lambda d: d.endswith(b"\n"), 10) == b"ready\n"
    count, sha = blob.digest(3 * MiB, seed=5)
    for c in blob.chunks(3 * MiB, seed=5):
        p.popen.stdin.write(c)
    p.popen.stdin.close()                                           # EOF: the sink answers only after it
    out = read_until(p, lambda d: False, 15)
    assert out == f"{count} {sha}\n".encode()
    assert wait_exit(p, 10) == 0, p.stderr_lines()
    assert p.stderr_lines() == [], "a clean stream printed something on standard error"
    assert sink.wait_results(1, 5) == [(count, sha)]


@pytest.mark.deadline(30)
def test_stdin_eof_before_the_tunnel_is_up(adit, targets):
    """`printf data | adit client URL --stdio HOST:PORT | cat`: standard input ends at once, before the tunnel
    and the stream are up; the data and the EOF must still reach the target, and its answer come back."""
    sink = targets.hash_sink()
    server = adit.server([f"127.0.0.1:{sink.port}"])
    data = b"printf'd before the tunnel was up\n" * 100
    p = stdio(adit, server.url, f"127.0.0.1:{sink.port}")
    try:
        out, _ = p.popen.communicate(data, timeout=H.scaled(15))
    except subprocess.TimeoutExpired:
        raise AssertionError(f"--stdio hangs when standard input ends before the stream is open; the target "
                             f"accepted {sink.accepted} connection(s) and got {sink.bytes_in} of {len(data)} bytes and "
                             f"{len(sink.results)} EOF(s); stderr {p.stderr_lines()}") from None
    assert out == f"{len(data)} {H.sha256_hex(data)}\n".encode()
    assert p.popen.returncode == 0, p.stderr_lines()


@pytest.mark.deadline(30)
def test_target_eof_reaches_stdout_then_clean_exit(adit, targets):
    def banner_then_close(conn, server):
        conn.sendall(b"banner from the target\n")
        return "closed"

    target = targets.custom("banner", banner_then_close)
    server = adit.server([f"127.0.0.1:{target.port}"])
    p = stdio(adit, server.url, f"127.0.0.1:{target.port}")
    # standard input stays open (as ssh keeps it): the target's EOF still ends standard output
    assert read_until(p, lambda d: False, 10) == b"banner from the target\n"
    p.popen.stdin.close()
    assert wait_exit(p, 10) == 0, p.stderr_lines()
    assert p.stderr_lines() == []


@pytest.mark.deadline(30)
@pytest.mark.parametrize("outcome", ["denied", "refused"])
def test_refused_stream_exit_1_with_one_line(adit, targets, outcome):
    if outcome == "denied":
        dport = targets.echo().port                 # listens, but the policy does not allow it
        allow = ["127.0.0.1:1"]
        words = "not allowed"
    else:
        dport = H.free_port()                       # allowed, nothing listens
        allow = [f"127.0.0.1:{dport}"]
        words = "refused"
    server = adit.server(allow)
    p = stdio(adit, server.url, f"127.0.0.1:{dport}")
    out = read_until(p, lambda d: False, 10)        # standard input stays open: the refusal alone ends it
    assert out == b""
    assert wait_exit(p, 10) == 1
    lines = p.stderr_lines()
    assert len(lines) == 1, f"expected one line on standard error: {lines}"
    assert words in lines[0] and f"127.0.0.1:{dport}" in lines[0], lines[0]


@pytest.mark.deadline(30)
def test_tunnel_lost_mid_stream_exit_1(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    p = stdio(adit, server.url, f"127.0.0.1:{echo.port}")
    p.popen.stdin.write(b"before the cut\n")
    p.popen.stdin.flush()
    assert read_until(p, lambda d: d.endswith(b"\n"), 10) == b"before the cut\n"
    server.kill()                                   # the tunnel is gone mid-stream
    assert read_until(p, lambda d: False, 10) == b""
    assert wait_exit(p, 10) == 1
    lines = p.stderr_lines()
    assert lines and "cut short" in lines[-1], lines


@pytest.mark.deadline(30)
def test_no_tunnel_exit_1(adit):
    dead = H.free_port()
    p = stdio(adit, f"ws://127.0.0.1:{dead}", "127.0.0.1:22", extra=["--wait-for-tunnel", "1"])
    t0 = time.monotonic()
    assert read_until(p, lambda d: False, 15) == b""
    assert wait_exit(p, 10) == 1
    waited = time.monotonic() - t0
    # the wait is 1 s; giving up before half of it is a bug, later than 10 s (scaled) too slow
    assert 0.5 <= waited <= H.scaled(10), f"gave up after {waited:.2f}s with --wait-for-tunnel 1"
    lines = p.stderr_lines()
    assert lines and "no tunnel" in lines[-1], lines


# ---------------------------------------------------------------------------------------------------------
# OpenSSH through --stdio


@pytest.fixture
def sshd(tmp_path):
    """A private sshd on 127.0.0.1 (root, public key only, its own host key and authorized_keys)."""
    if not (os.path.exists(SSHD) and shutil.which("ssh") and shutil.which("ssh-keygen")):
        pytest.skip("OpenSSH (ssh, ssh-keygen, /usr/sbin/sshd) is needed")
    if os.geteuid() != 0:
        pytest.skip("the private sshd runs as root")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)        # privilege separation directory
    d = tmp_path / "sshd"
    d.mkdir()
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", str(d / key)],
                       check=True, capture_output=True, timeout=H.scaled(20))
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    port = H.free_port()
    cfg = d / "sshd_config"
    cfg.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {d / 'host_key'}", f"PidFile {d / 'sshd.pid'}",
        f"AuthorizedKeysFile {d / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", "LogLevel VERBOSE", "",
    ]))
    log_path = d / "sshd.log"
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + H.scaled(10)
        while not H.port_listening(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"sshd did not listen on {port} (exit {proc.poll()}): {log_path.read_text()}")
            time.sleep(0.02)
        yield SimpleNamespace(port=port, key=d / "user_key", log=log_path)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=H.scaled(5))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=H.scaled(5))


def ssh(adit, server, sshd, command: str, stdin: bytes = b"", timeout: float = 25) -> subprocess.CompletedProcess:
    proxy_command = f"{adit.bin} client {server.url} --stdio %h:%p"
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower() and k != "SSH_AUTH_SOCK"}
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-o", f"ProxyCommand={proxy_command}", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "LogLevel=ERROR", "-i", str(sshd.key), "-p", str(sshd.port), "root@127.0.0.1", command],
        input=stdin, capture_output=True, timeout=H.scaled(timeout), env=env)


@pytest.mark.deadline(40)
def test_openssh_login_through_stdio(adit, sshd):
    server = adit.server([f"127.0.0.1:{sshd.port}"])
    r = ssh(adit, server, sshd, "echo hello-through-adit; cat /etc/hostname")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == "hello-through-adit\n" + Path("/etc/hostname").read_text()
    assert r.stderr == b"", r.stderr.decode()
    # it went through the tunnel, and sshd saw a public-key login
    assert server.wait_for_log("tunnel opened", timeout=5)
    assert "Accepted publickey for root" in sshd.log.read_text()


@pytest.mark.deadline(40)
def test_openssh_pipes_4_mib_through_stdio(adit, sshd, blob):
    server = adit.server([f"127.0.0.1:{sshd.port}"])
    data = blob.bytes(4 * MiB, seed=9)
    r = ssh(adit, server, sshd, "sha256sum", stdin=data)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == f"{H.sha256_hex(data)}  -\n"
    # and the other way: 4 MiB from the remote side, counted and hashed here
    r = ssh(adit, server, sshd, "head -c 4194304 /dev/zero")
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout == b"\0" * (4 * MiB)
