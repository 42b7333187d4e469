"""Real proxies for the end-to-end tests, started and stopped by PID: squid (no auth, Basic, Digest, NTLM checked
by a helper of ours that verifies NTLMv2, fixtures/ntlm_verify_auth.py), tinyproxy (Basic; it closes the
connection after a 407), Debian's dante (SOCKS5 without authentication: its username method checks system
users), a small SOCKS5 server of our own (username/password, any kind of bound address, any refusal code) and a
small Digest proxy of our own that requires the `-sess` algorithms (squid offers plain MD5 only).

Recipes follow squid 5.7 and tinyproxy 1.11.1 on Debian 12: a unique `squid -n` per instance (they share
memory segments by name otherwise), `pinger_enable off`, an instance directory owned by `proxy` (squid drops
to that user), CONNECT allowed only to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import select
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import e2e_helpers as H

USER, PASSWORD, REALM = "alice", "s3cret", "tunnel-test"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# squid's default access-log format, plus the bytes received from the client (%>st), so that a test can tell how
# much went up a tunnel and not only down it.
SQUID_LOGFORMAT = "%ts.%03tu %6tr %>a %Ss/%03>Hs %<st %rm %ru %[un %Sh/%<a %mt up=%>st"


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.03)
    raise RuntimeError(f"{proc.args[0]} did not listen on {port} within {timeout}s")


class Squid:
    """squid with one auth variant: noauth, basic, digest, ntlm."""

    def __init__(self, variant: str, tmp: Path, deny_port: int | None = None, kerberos: "KerberosRealm | None" = None):
        self.variant = variant
        self.port = H.free_port()
        # Not under pytest's tmp dir: squid runs as `proxy`, which cannot enter root's 0700 directories.
        self.dir = Path(tempfile.mkdtemp(prefix=f"adit-squid-{variant}-"))
        os.chmod(self.dir, 0o755)
        lines = [
            f"http_port 127.0.0.1:{self.port}", "visible_hostname squid-test",
            f"pid_filename {self.dir}/squid.pid", f"cache_log {self.dir}/cache.log",
            f"logformat adit {SQUID_LOGFORMAT}", f"access_log stdio:{self.dir}/access.log adit",
            "cache_store_log none", f"coredump_dir {self.dir}",
            "netdb_filename none", "pinger_enable off", "cache_mem 8 MB", "cache deny all",
            "shutdown_lifetime 0 seconds", "acl loopback_dst dst 127.0.0.1/32",
        ]
        if variant == "basic":
            subprocess.run(["htpasswd", "-bc", str(self.dir / "htpasswd"), USER, PASSWORD], check=True,
                           capture_output=True)
            lines += [f"auth_param basic program /usr/lib/squid/basic_ncsa_auth {self.dir}/htpasswd",
                      "auth_param basic children 2 startup=1 idle=1", f"auth_param basic realm {REALM}"]
        elif variant == "digest":
            ha1 = hashlib.md5(f"{USER}:{REALM}:{PASSWORD}".encode()).hexdigest()
            (self.dir / "digest-ha1").write_text(f"{USER}:{REALM}:{ha1}\n")
            lines += [f"auth_param digest program /usr/lib/squid/digest_file_auth -c {self.dir}/digest-ha1",
                      "auth_param digest children 2 startup=1 idle=1", f"auth_param digest realm {REALM}"]
        elif variant == "negotiate":
            lines += [f"auth_param negotiate program /usr/lib/squid/negotiate_kerberos_auth -k {kerberos.keytab} -s GSS_C_NO_NAME",
                      "auth_param negotiate children 2 startup=1 idle=1", "auth_param negotiate keep_alive on"]
        elif variant == "ntlm":
            # Our verifying helper, copied where `proxy` can read it; it logs every verdict to ntlm-helper.log.
            shutil.copy(FIXTURES / "ntlm_verify_auth.py", self.dir / "ntlm_verify_auth.py")
            (self.dir / "ntlm-users").write_text(f"{USER}:{PASSWORD}\n")
            (self.dir / "ntlm-helper.log").write_text("")
            lines += [f"auth_param ntlm program /usr/bin/python3 {self.dir}/ntlm_verify_auth.py "
                      f"{self.dir}/ntlm-users {self.dir}/ntlm-helper.log",
                      "auth_param ntlm children 2 startup=1 idle=1"]
        if deny_port:
            lines += [f"acl denied_port port {deny_port}", "http_access deny CONNECT denied_port"]
        lines.append("http_access deny CONNECT !loopback_dst")
        if variant == "noauth":
            lines.append("http_access allow localhost loopback_dst")
        else:
            lines += ["acl authed proxy_auth REQUIRED", "http_access allow localhost loopback_dst authed"]
        lines.append("http_access deny all")
        (self.dir / "squid.conf").write_text("\n".join(lines) + "\n")
        proxy_user = pwd.getpwnam("proxy")
        for p in [self.dir, *self.dir.iterdir()]:
            os.chown(p, proxy_user.pw_uid, proxy_user.pw_gid)
        self.name = f"adite2e{variant}{self.port}"   # alphanumeric only
        self.log = self.dir / "stderr.log"
        env = {**os.environ, **(kerberos.env if kerberos else {})}   # the helper reads KRB5_CONFIG
        self.proc = subprocess.Popen(["squid", "-n", self.name, "-N", "-f", str(self.dir / "squid.conf")],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env=env)
        _wait_port(self.port, self.proc, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def access_log(self) -> str:
        try:
            return (self.dir / "access.log").read_text(errors="replace")
        except OSError:
            return ""

    def entries(self) -> list[dict]:
        """The access log parsed (SQUID_LOGFORMAT): status ("TCP_TUNNEL/200"), method, url, user, down (bytes
        sent to the client), up (bytes received from it)."""
        out = []
        for line in self.access_log().splitlines():
            f = line.split()
            if len(f) < 11 or not f[-1].startswith("up="):
                continue
            out.append({"status": f[3], "down": int(f[4]), "method": f[5], "url": f[6], "user": f[7],
                        "up": int(f[-1][3:]), "line": line})
        return out

    def tunnels_to(self, port: int) -> list[dict]:
        """Access-log entries of CONNECTs to 127.0.0.1:port (squid logs a tunnel when it ends)."""
        return [e for e in self.entries() if e["method"] == "CONNECT" and e["url"] == f"127.0.0.1:{port}"]

    def ntlm_log(self) -> list[str]:
        """The verdicts of the NTLM helper (variant "ntlm"): 'VERIFIED domain=… user=…' or
        'REJECTED domain=… user=… reason=…', one line per type-3 message it checked."""
        try:
            return (self.dir / "ntlm-helper.log").read_text(errors="replace").splitlines()
        except OSError:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()   # SIGTERM takes 1-2.5 s even with shutdown_lifetime 0; nothing to save here
            self.proc.wait(10)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # the auth helpers
        except ProcessLookupError:
            pass
        for shm in Path("/dev/shm").glob(f"{self.name}-*"):
            shm.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)


class Tinyproxy:
    def __init__(self, tmp: Path, basic: bool = True):
        self.port = H.free_port()
        self.dir = tmp / f"tinyproxy-{self.port}"
        self.dir.mkdir(parents=True)
        conf = [f"Port {self.port}", "Listen 127.0.0.1", "Timeout 600", "MaxClients 64", "LogLevel Info",
                f'LogFile "{self.dir}/tinyproxy.log"', f'PidFile "{self.dir}/tinyproxy.pid"', "Allow 127.0.0.1"]
        if basic:
            conf.append(f"BasicAuth {USER} {PASSWORD}")
        (self.dir / "tinyproxy.conf").write_text("\n".join(conf) + "\n")
        self.log = self.dir / "stderr.log"
        self.proc = subprocess.Popen(["tinyproxy", "-d", "-c", str(self.dir / "tinyproxy.conf")],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        try:
            return (self.dir / "tinyproxy.log").read_text(errors="replace")
        except OSError:
            return ""

    def requests_to(self, port: int) -> list[str]:
        """tinyproxy's log lines of CONNECT requests to 127.0.0.1:port (one per request it read)."""
        return [ln for ln in self.log_text().splitlines() if f"): CONNECT 127.0.0.1:{port} " in ln]

    def established(self) -> list[str]:
        """tinyproxy's log lines of connections it made to a target (one per tunnel it carried)."""
        return [ln for ln in self.log_text().splitlines() if "Established connection to host" in ln]

    def stop(self) -> None:
        stop_process(self.proc)


class Socks5Server:
    """RFC 1928 CONNECT with RFC 1929 username/password (required when `credentials` is given), threads.

    `bound`: the kind of BND.ADDR in its success reply, "ipv4" (127.0.0.1), "ipv6" (::1) or "domain" (a name):
    a client must read the whole reply, whatever its length, before the tunnel's first byte. `refuse`: answer
    every CONNECT with this reply code (1-8) instead of connecting. `relayed` counts the bytes carried up
    (client to target) and down, over all connections."""

    BOUND_NAME = b"bound.socks5.adit-e2e.example"

    def __init__(self, credentials: tuple[str, str] | None = (USER, PASSWORD), bound: str = "ipv4",
                 refuse: int | None = None):
        self.credentials = credentials
        self.bound = bound
        self.refuse = refuse
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[str, int]] = []   # (host as the client sent it, port)
        self.replies: list[int] = []                # the reply code of every CONNECT answered
        self.relayed = {"up": 0, "down": 0}
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"socks5h://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _exactly(conn, n):
        data = b""
        while len(data) < n:
            chunk = conn.recv(n - len(data))
            if not chunk:
                raise ConnectionError("closed")
            data += chunk
        return data

    def _bound_address(self) -> bytes:
        port = struct.pack("!H", 4321)
        if self.bound == "ipv6":
            return b"\x04" + socket.inet_pton(socket.AF_INET6, "::1") + port
        if self.bound == "domain":
            return b"\x03" + bytes([len(self.BOUND_NAME)]) + self.BOUND_NAME + port
        return b"\x01" + socket.inet_aton("127.0.0.1") + port

    def _serve(self, conn):
        try:
            ver, n = self._exactly(conn, 2)
            methods = self._exactly(conn, n)
            if self.credentials:
                if 2 not in methods:
                    conn.sendall(b"\x05\xff")
                    return
                conn.sendall(b"\x05\x02")
                _, ulen = self._exactly(conn, 2)
                user = self._exactly(conn, ulen).decode()
                (plen,) = self._exactly(conn, 1)
                password = self._exactly(conn, plen).decode()
                if (user, password) != self.credentials:
                    conn.sendall(b"\x01\x01")
                    return
                conn.sendall(b"\x01\x00")
            else:
                conn.sendall(b"\x05\x00")
            _, cmd, _, atyp = self._exactly(conn, 4)
            if atyp == 1:
                host = socket.inet_ntop(socket.AF_INET, self._exactly(conn, 4))
            elif atyp == 4:
                host = socket.inet_ntop(socket.AF_INET6, self._exactly(conn, 16))
            else:
                (length,) = self._exactly(conn, 1)
                host = self._exactly(conn, length).decode()
            (port,) = struct.unpack("!H", self._exactly(conn, 2))
            self.requests.append((host, port))
            if self.refuse is not None:
                self.replies.append(self.refuse)
                conn.sendall(bytes([5, self.refuse, 0]) + b"\x01" + bytes(6))
                return
            try:
                upstream = socket.create_connection((host, port), timeout=5)
            except OSError:
                self.replies.append(5)
                conn.sendall(b"\x05\x05\x00\x01" + bytes(6))   # connection refused
                return
            self.replies.append(0)
            conn.sendall(b"\x05\x00\x00" + self._bound_address())
            relay(conn, upstream, counts=self.relayed)
        except (OSError, ConnectionError, ValueError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.listener.close()


class Dante:
    """Debian's SOCKS server, danted (package dante-server), in the foreground with its own configuration: loopback
    only, CONNECT to 127.0.0.0/8, no authentication (dante's `username` method checks the system's users, and
    the tests create none). Its log has a line per session with the bytes it carried."""

    def __init__(self, tmp: Path):
        self.port = H.free_port()
        self.dir = tmp / f"dante-{self.port}"
        self.dir.mkdir(parents=True)
        self.logfile = self.dir / "danted.log"
        (self.dir / "danted.conf").write_text(f"""logoutput: {self.logfile}
internal: 127.0.0.1 port = {self.port}
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 127.0.0.0/8 to: 0.0.0.0/0
    log: connect disconnect error
}}
socks pass {{
    from: 127.0.0.0/8 to: 127.0.0.0/8
    command: connect
    log: connect disconnect error
}}
socks block {{
    from: 0.0.0.0/0 to: 0.0.0.0/0
    log: connect error
}}
""")
        self.log = self.dir / "stderr.log"
        self.proc = subprocess.Popen(["danted", "-f", str(self.dir / "danted.conf"),
                                      "-p", str(self.dir / "danted.pid"), "-N", "1"],
                                     stdout=open(self.log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)

    def log_text(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def sessions_to(self, port: int) -> list[str]:
        """danted's log lines of finished CONNECT sessions to 127.0.0.1:port (it writes the address as
        127.0.0.1.PORT)."""
        return [ln for ln in self.log_text().splitlines()
                if "tcp/connect ]" in ln and f"127.0.0.1.{port} " in ln]

    def bytes_sent_to(self, port: int) -> list[int]:
        """Bytes dante wrote to 127.0.0.1:port, one number per finished session (its log reads
        `… N -> CLIENT-SIDE-ADDRS -> …, SENT -> OURADDR 127.0.0.1.PORT -> RECEIVED: …`)."""
        import re
        pat = re.compile(rf"(\d+) -> \S+ 127\.0\.0\.1\.{port} -> \d+")
        return [int(m.group(1)) for ln in self.sessions_to(port) for m in [pat.search(ln)] if m]

    def stop(self) -> None:
        stop_process(self.proc)
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)   # its children (negotiators, request and I/O processes)
        except ProcessLookupError:
            pass


class TapRelay:
    """A TCP relay in front of a proxy that records, per connection, what really went over the wire: the client's
    request head, the proxy's first answer line, which side closed first, and the bytes each way. It judges the
    proxy's behaviour (a 407 then a close) from the proxy's own bytes, not from what adit says about them."""

    class Conn:
        def __init__(self):
            self.request = b""          # the first bytes from the client (up to the end of its head)
            self.answer = b""           # the first bytes from the proxy (up to the end of its head)
            self.up = 0
            self.down = 0
            self.first_eof = None       # "proxy" or "client": whose EOF came first
            self.done = threading.Event()

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.conns: list[TapRelay.Conn] = []
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self):
        while not self.stopped:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            rec = TapRelay.Conn()
            self.conns.append(rec)
            threading.Thread(target=self._serve, args=(client, rec), daemon=True).start()

    def _serve(self, client, rec):
        try:
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
        except OSError:
            client.close()
            rec.done.set()
            return
        socks = [client, upstream]
        try:
            while socks:
                readable, _, _ = select.select(socks, [], [], 60)
                if not readable:
                    return
                for s in readable:
                    try:
                        data = s.recv(1 << 16)
                    except OSError:
                        data = b""
                    other = upstream if s is client else client
                    if not data:
                        if rec.first_eof is None:
                            rec.first_eof = "client" if s is client else "proxy"
                        socks.remove(s)
                        try:
                            other.shutdown(socket.SHUT_WR)
                        except OSError:
                            pass
                        continue
                    if s is client:
                        rec.up += len(data)
                        if b"\r\n\r\n" not in rec.request:
                            rec.request += data[:4096]
                    else:
                        rec.down += len(data)
                        if b"\r\n\r\n" not in rec.answer:
                            rec.answer += data[:4096]
                    try:
                        other.sendall(data)
                    except OSError:
                        return
        finally:
            client.close()
            upstream.close()
            rec.done.set()

    def stop(self):
        self.stopped = True
        self.listener.close()


class DigestSessProxy:
    """An HTTP CONNECT proxy that requires Digest with one algorithm (RFC 7616), e.g. MD5-sess or SHA-256-sess,
    `qop=auth`, and checks the answer against USER/PASSWORD: for the -sess forms
    HA1 = H(H(user:realm:password):nonce:cnonce). squid cannot offer -sess, hence this fixture. It keeps the
    connection open after its 407 and tunnels an accepted CONNECT to its target. `verdicts` records each answer
    checked: ("VERIFIED" | "REJECTED", details)."""

    REALM = "adit-sess"

    def __init__(self, algorithm: str = "MD5-sess", user: str = USER, password: str = PASSWORD):
        self.algorithm = algorithm
        self.user, self.password = user, password
        self.hash = hashlib.sha256 if algorithm.upper().startswith("SHA-256") else hashlib.md5
        self.nonces: set[str] = set()
        self.verdicts: list[tuple[str, str]] = []
        self.challenges = 0
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _h(self, text: str) -> str:
        return self.hash(text.encode()).hexdigest()

    def _accept(self):
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    @staticmethod
    def _params(value: str) -> dict[str, str]:
        import re
        return {k.lower(): (v1 if v1 != "" or v2 == "" else v2)
                for k, v1, v2 in re.findall(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))', value)}

    def _check(self, method: str, target: str, header: str) -> tuple[bool, str]:
        if not header.lower().startswith("digest "):
            return False, f"not Digest: {header.split(' ')[0]}"
        p = self._params(header[7:])
        for need in ("username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce"):
            if need not in p:
                return False, f"no {need}"
        if p.get("algorithm", "MD5").lower() != self.algorithm.lower():
            return False, f"algorithm {p.get('algorithm', 'MD5')}, we asked for {self.algorithm}"
        if p["nonce"] not in self.nonces:
            return False, "a nonce we never gave"
        if p["uri"] != target:
            return False, f"uri {p['uri']!r} is not the CONNECT target {target!r}"
        ha1 = self._h(f"{p['username']}:{p['realm']}:{self.password}")
        if self.algorithm.lower().endswith("-sess"):
            ha1 = self._h(f"{ha1}:{p['nonce']}:{p['cnonce']}")
        ha2 = self._h(f"{method}:{p['uri']}")
        expected = self._h(f"{ha1}:{p['nonce']}:{p['nc']}:{p['cnonce']}:{p['qop']}:{ha2}")
        if p["username"] != self.user or p["realm"] != self.REALM:
            return False, f"user {p['username']!r} realm {p['realm']!r}"
        if p["response"] != expected:
            return False, f"wrong response for user {p['username']} (algorithm {self.algorithm})"
        return True, f"user {p['username']} algorithm {p.get('algorithm')} qop {p['qop']}"

    def _serve(self, conn):
        try:
            conn.settimeout(30)
            buf = b""
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = {}
                for ln in lines[1:]:
                    k, _, v = ln.partition(":")
                    headers[k.strip().lower()] = v.strip()
                auth = headers.get("proxy-authorization")
                if auth is not None:
                    ok, why = self._check(method, target, auth)
                    self.verdicts.append(("VERIFIED" if ok else "REJECTED", why))
                    if ok and method == "CONNECT":
                        host, port = target.rsplit(":", 1)
                        try:
                            upstream = socket.create_connection((host, int(port)), timeout=5)
                        except OSError:
                            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")
                            return
                        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        conn.settimeout(None)
                        if buf:
                            upstream.sendall(buf)
                        relay(conn, upstream)
                        return
                nonce = os.urandom(16).hex()
                self.nonces.add(nonce)
                self.challenges += 1
                body = b"proxy authentication required\n"
                conn.sendall((f'HTTP/1.1 407 Proxy Authentication Required\r\n'
                              f'Proxy-Authenticate: Digest realm="{self.REALM}", qop="auth", '
                              f'algorithm={self.algorithm}, nonce="{nonce}", opaque="adit"\r\n'
                              f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body)
        except (OSError, ValueError):
            pass
        finally:
            conn.close()

    def stop(self):
        self.stopped = True
        self.listener.close()


def stop_process(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; waits for the process either way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def relay(a, b, counts: dict | None = None):
    """Copies both ways between two sockets until either side ends (or 30 s of silence); closes `b`. `counts`, if
    given, gets the bytes carried: "up" from a to b, "down" from b to a."""
    socks = [a, b]
    try:
        while True:
            readable, _, _ = select.select(socks, [], [], 30)
            if not readable:
                return
            for s in readable:
                data = s.recv(1 << 16)
                if not data:
                    return
                (b if s is a else a).sendall(data)
                if counts is not None:
                    counts["up" if s is a else "down"] += len(data)
    finally:
        b.close()


def have(*commands: str) -> bool:
    return all(shutil.which(c) for c in commands)


class TLSFront:
    """TLS in front of a plain proxy (an https:// proxy): accepts TLS with `cert`/`key`, relays to `upstream`."""

    def __init__(self, cert, key, upstream_port: int):
        import ssl
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(str(cert), str(key))
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(32)
        self.port = self.listener.getsockname()[1]
        self.handshakes = 0
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stopped:
            try:
                raw, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw):
        try:
            conn = self.context.wrap_socket(raw, server_side=True)
            self.handshakes += 1
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            relay(conn, upstream)
        except (OSError, ValueError):
            pass
        finally:
            raw.close()

    def stop(self):
        self.stopped = True
        self.listener.close()


class KerberosRealm:
    """A throwaway MIT Kerberos realm on loopback: a KDC, a user with a ticket in its own cache, and the
    proxy's HTTP/localhost key in a keytab squid can read. `env` is what clients and squid need."""

    REALM = "ADIT.TEST"

    def __init__(self):
        self.dir = Path(tempfile.mkdtemp(prefix="adit-krb-"))
        os.chmod(self.dir, 0o755)
        self.port = H.free_port()
        (self.dir / "krb5.conf").write_text(f"""[libdefaults]
    default_realm = {self.REALM}
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
[realms]
    {self.REALM} = {{
        kdc = 127.0.0.1:{self.port}
    }}
[domain_realm]
    localhost = {self.REALM}
""")
        (self.dir / "kdc.conf").write_text(f"""[kdcdefaults]
    kdc_ports = {self.port}
    kdc_tcp_ports = {self.port}
[realms]
    {self.REALM} = {{
        database_name = {self.dir}/principal
        key_stash_file = {self.dir}/stash
        acl_file = {self.dir}/kadm5.acl
        kdc_listen = 127.0.0.1:{self.port}
        kdc_tcp_listen = 127.0.0.1:{self.port}
    }}
[logging]
    kdc = FILE:{self.dir}/kdc.log
""")
        (self.dir / "kadm5.acl").write_text("")
        self.ccache = self.dir / "alice.ccache"
        self.keytab = self.dir / "http.keytab"
        self.env = {"KRB5_CONFIG": str(self.dir / "krb5.conf"), "KRB5_KDC_PROFILE": str(self.dir / "kdc.conf"),
                    "KRB5RCACHETYPE": "none", "KRB5CCNAME": f"FILE:{self.ccache}"}
        run_env = {**os.environ, **self.env}

        def run(*argv, stdin=None):
            subprocess.run(list(argv), check=True, capture_output=True, env=run_env, input=stdin, timeout=30)

        run("kdb5_util", "create", "-s", "-r", self.REALM, "-P", "masterpw")
        run("kadmin.local", "-q", "addprinc -pw alicepw alice")
        run("kadmin.local", "-q", "addprinc -randkey HTTP/localhost")
        run("kadmin.local", "-q", f"ktadd -k {self.keytab} HTTP/localhost")
        proxy_user = pwd.getpwnam("proxy")
        os.chown(self.keytab, proxy_user.pw_uid, proxy_user.pw_gid)
        self.log = self.dir / "krb5kdc.log"
        self.proc = subprocess.Popen(["krb5kdc", "-n"], env=run_env, stdout=open(self.log, "w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        _wait_port(self.port, self.proc, self.log)
        run("kinit", "alice", stdin=b"alicepw\n")

    def stop(self):
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)
