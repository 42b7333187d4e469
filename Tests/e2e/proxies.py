"""Real proxies for the end-to-end tests, started and stopped by PID: squid (no auth, Basic, Digest, NTLM via
ntlm_fake_auth), tinyproxy (Basic; it closes the connection after a 407) and a small SOCKS5 server with
username/password (written here: Debian's SOCKS servers need system configuration).

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
            f"access_log stdio:{self.dir}/access.log", "cache_store_log none", f"coredump_dir {self.dir}",
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
            lines += ["auth_param ntlm program /usr/lib/squid/ntlm_fake_auth",
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

    def stop(self) -> None:
        stop_process(self.proc)


class Socks5Server:
    """RFC 1928 CONNECT with RFC 1929 username/password (required when `credentials` is given), threads."""

    def __init__(self, credentials: tuple[str, str] | None = (USER, PASSWORD)):
        self.credentials = credentials
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.requests: list[tuple[str, int]] = []   # (host as the client sent it, port)
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
            try:
                upstream = socket.create_connection((host, port), timeout=5)
            except OSError:
                conn.sendall(b"\x05\x05\x00\x01" + bytes(6))   # connection refused
                return
            conn.sendall(b"\x05\x00\x00\x01" + bytes(6))
            relay(conn, upstream)
        except (OSError, ConnectionError, ValueError):
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


def relay(a, b):
    """Copies both ways between two sockets until either side ends (or 30 s of silence); closes `b`."""
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
