"""wss:// end to end: `adit keygen`, the server's certificate verified by --ca-file or by --pin, refused
without either, names and addresses checked (also through a proxy), mutual TLS, and the failures in words."""

import os
import re
import stat
import subprocess

import pytest

import e2e_helpers as H
from proxies import Squid, TLSFront, have

MiB = H.MiB


def keygen(adit_bin, tmp_path, name, *args):
    cert, key = tmp_path / f"{name}-cert.pem", tmp_path / f"{name}-key.pem"
    p = subprocess.run([str(adit_bin), "keygen", "--cert", str(cert), "--key", str(key), *args],
                       capture_output=True, text=True, timeout=H.scaled(20), env=H._child_env())
    assert p.returncode == 0, p.stderr
    pin = re.search(r"pin: (sha256/\S+)", p.stdout).group(1)
    return cert, key, pin, p.stdout


@pytest.fixture
def pki(adit_bin, tmp_path):
    cert, key, pin, _ = keygen(adit_bin, tmp_path, "server", "--name", "localhost", "--ip", "127.0.0.1")
    return cert, key, pin


def wss_server(adit, target_port, pki, extra=()):
    cert, key, _ = pki
    return adit.server([f"127.0.0.1:{target_port}"], extra=["--tls-cert", str(cert), "--tls-key", str(key), *extra])


def wss_client(adit, server, target_port, extra, host="127.0.0.1", env=None, ready=True):
    local = H.free_port()
    client = adit.client(f"wss://{host}:{server.port}/", [(local, "127.0.0.1", target_port)], extra=list(extra), env=env)
    if ready:
        H.wait_tunnel_ready(local, timeout=15, proc=client)
    return client, local


@pytest.mark.deadline(20)
def test_keygen_writes_a_private_key_and_prints_a_pin(adit_bin, tmp_path):
    cert, key, pin, out = keygen(adit_bin, tmp_path, "k", "--name", "gw.example", "--ip", "192.0.2.1", "--days", "30")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert "--pin " + pin in out and "adit server" in out
    text = subprocess.run(["openssl", "x509", "-in", str(cert), "-noout", "-text"], capture_output=True,
                          text=True).stdout if have("openssl") else ""
    if text:
        assert "DNS:gw.example" in text and "IP Address:192.0.2.1" in text, text
    again = subprocess.run([str(adit_bin), "keygen", "--cert", str(cert), "--key", str(key)], capture_output=True,
                           text=True, timeout=H.scaled(20), env=H._child_env())
    assert again.returncode == 64 and "--force" in again.stderr


@pytest.mark.deadline(60)
def test_wss_verified_by_ca_file_and_by_pin(adit, targets, pki):
    echo = targets.echo()
    server = wss_server(adit, echo.port, pki)
    assert server.wait_for_log(f"listening on wss://127.0.0.1:{server.port}/")
    cert, _, pin = pki
    by_ca, _ = wss_client(adit, server, echo.port, ["--ca-file", str(cert)])
    by_pin, _ = wss_client(adit, server, echo.port, ["--pin", pin, "--pin-only"])
    both, _ = wss_client(adit, server, echo.port, ["--ca-file", str(cert), "--pin", pin], host="localhost")
    insecure, _ = wss_client(adit, server, echo.port, ["--insecure"])
    assert insecure.wait_for_log("--insecure: the server's certificate is NOT verified")


@pytest.mark.deadline(60)
def test_wss_refused_without_ca_or_pin_and_with_a_wrong_pin(adit, targets, pki, adit_bin, tmp_path):
    echo = targets.echo()
    server = wss_server(adit, echo.port, pki)
    cert, _, _ = pki
    _, _, other_pin, _ = keygen(adit_bin, tmp_path, "other", "--name", "localhost")
    untrusted, _ = wss_client(adit, server, echo.port, [], ready=False)
    assert untrusted.wait_for_log("is not trusted: give its CA with --ca-file", timeout=10)
    pin_alone, _ = wss_client(adit, server, echo.port, ["--pin", other_pin], ready=False)
    assert pin_alone.wait_for_log("is not trusted", timeout=10)   # --pin adds to verification
    wrong_pin, _ = wss_client(adit, server, echo.port, ["--ca-file", str(cert), "--pin", other_pin], ready=False)
    assert wrong_pin.wait_for_log("matches none of the --pin values", timeout=10)
    wrong_pin_only, _ = wss_client(adit, server, echo.port, ["--pin", other_pin, "--pin-only"], ready=False)
    assert wrong_pin_only.wait_for_log("matches none of the --pin values", timeout=10)


@pytest.mark.deadline(60)
def test_the_urls_host_is_checked_against_the_certificate(adit, targets, adit_bin, tmp_path):
    echo = targets.echo()
    only_name = keygen(adit_bin, tmp_path, "named", "--name", "localhost")
    server = wss_server(adit, echo.port, only_name[:3])
    by_ip, _ = wss_client(adit, server, echo.port, ["--ca-file", str(only_name[0])], ready=False)
    line = by_ip.wait_for_log("not valid for 127.0.0.1", timeout=10)
    assert "it names localhost" in line, line
    named, _ = wss_client(adit, server, echo.port, ["--ca-file", str(only_name[0]), "--tls-server-name", "localhost"])
    only_ip = keygen(adit_bin, tmp_path, "ip", "--ip", "127.0.0.1")
    server_ip = wss_server(adit, echo.port, only_ip[:3])
    wrong_name, _ = wss_client(adit, server_ip, echo.port, ["--ca-file", str(only_ip[0])], host="localhost", ready=False)
    assert wrong_name.wait_for_log("not valid for localhost", timeout=10)


def squid_tunnels(squid: Squid, port: int) -> list[str]:
    """squid's access-log lines of CONNECT tunnels to 127.0.0.1:port (it writes one when a tunnel ends): the
    proxy's own word that it carried a connection, which a client ignoring --proxy cannot produce."""
    return [ln for ln in squid.access_log().splitlines()
            if "TCP_TUNNEL/200" in ln and f" CONNECT 127.0.0.1:{port} " in ln]


def wait_squid_tunnels(squid: Squid, port: int, n: int) -> list[str]:
    H.wait_until(lambda: len(squid_tunnels(squid, port)) >= n, 10,
                 what=f"squid to log {n} CONNECT tunnel(s) to 127.0.0.1:{port}")
    return squid_tunnels(squid, port)


@pytest.mark.skipif(not have("squid", "htpasswd"), reason="squid is needed (make test installs it)")
@pytest.mark.deadline(90)
def test_wss_through_squid_256_mib_and_checked_against_the_url_host(adit, targets, pki, blob, tmp_path):
    sink = targets.hash_sink()
    server = wss_server(adit, sink.port, pki)
    squid = Squid("noauth", tmp_path)
    try:
        cert, _, pin = pki
        for n, args in enumerate((["--ca-file", str(cert)], ["--pin", pin, "--pin-only"]), start=1):
            local = H.free_port()
            client = adit.client(f"wss://127.0.0.1:{server.port}/", [(local, "127.0.0.1", sink.port)],
                                 extra=["--proxy", squid.url, *args])
            H.wait_for_port(local, timeout=10, connect=False)
            with H.connect_local(local, timeout=20) as s:
                s.settimeout(H.scaled(60))
                count, sha = H.send_blob(s, blob, 256 * MiB, seed=5)
                assert H.recv_until_eof(s) == f"{count} {sha}\n".encode()
            assert client.log_lines_matching("through the proxy")
            client.stop()   # squid logs a tunnel when it ends
            # squid carried it: its n-th tunnel to the server, with the 256 MiB in it (the `up=` field, bytes from
            # the client, is in the log format proxies.Squid configures)
            line = wait_squid_tunnels(squid, server.port, n)[n - 1]
            up = re.search(r" up=(\d+)", line)
            assert up, f"no up= field in squid's access log line: {line}"
            assert int(up.group(1)) >= 256 * MiB, f"squid carried only {int(up.group(1))} bytes up: {line}"
        # Without a CA or pin, refused — through the proxy as directly.
        refused = adit.client(f"wss://127.0.0.1:{server.port}/", [(H.free_port(), "127.0.0.1", sink.port)],
                              extra=["--proxy", squid.url])
        line = refused.wait_for_log("is not trusted", timeout=15)
        assert "through the proxy" in line, line
        refused.stop()
        wait_squid_tunnels(squid, server.port, 3)   # the refused attempt went through squid too
        # https_proxy is the one for wss://.
        env_client = adit.client(f"wss://127.0.0.1:{server.port}/", [(H.free_port(), "127.0.0.1", sink.port)],
                                 extra=["--ca-file", str(cert)], env={"https_proxy": squid.url})
        assert env_client.wait_for_log(f"through the proxy http://127.0.0.1:{squid.port} (from https_proxy)")
        env_client.wait_for_log("is up", timeout=15)
        env_client.stop()
        wait_squid_tunnels(squid, server.port, 4)
    finally:
        squid.stop()


@pytest.mark.deadline(60)
def test_mutual_tls(adit, targets, pki, adit_bin, tmp_path):
    echo = targets.echo()
    client_cert, client_key, _, _ = keygen(adit_bin, tmp_path, "client", "--name", "alice.clients")
    server = wss_server(adit, echo.port, pki, extra=["--tls-ca", str(client_cert)])
    cert, _, _ = pki
    with_cert, _ = wss_client(adit, server, echo.port, ["--ca-file", str(cert), "--tls-cert", str(client_cert),
                                                         "--tls-key", str(client_key)])
    without, _ = wss_client(adit, server, echo.port, ["--ca-file", str(cert)], ready=False)
    assert without.wait_for_log("cannot reach the tunnel server", timeout=10)
    assert server.wait_for_log("sent no client certificate", timeout=10)


@pytest.mark.deadline(40)
def test_tls_mismatches_are_named(adit, targets, pki):
    """Both ways round, named at once on both sides (test_operations.py checks the timing and the exit)."""
    echo = targets.echo()
    plain = adit.server([f"127.0.0.1:{echo.port}"])
    tls_to_plain, _ = wss_client(adit, plain, echo.port, ["--insecure"], ready=False)
    assert tls_to_plain.wait_for_log("the server answered in plain text, not TLS: for a plain ws:// server use a ws:// URL", timeout=10)
    assert plain.wait_for_log("a client spoke TLS to this plain ws:// port", timeout=10)
    secure = wss_server(adit, echo.port, pki)
    local = H.free_port()
    plain_to_tls = adit.client(f"ws://127.0.0.1:{secure.port}/", [(local, "127.0.0.1", echo.port)], wait=False)
    assert secure.wait_for_log("a client spoke plain HTTP to this wss:// port", timeout=10)
    H.assert_stops(plain_to_tls)
    assert "This Adit server speaks TLS: use a wss:// URL." in plain_to_tls.log_text()


BAD = [
    ["client", "ws://127.0.0.1:1", "-L", "1:h:2", "--ca-file", "x.pem"],
    ["client", "wss://127.0.0.1:1", "-L", "1:h:2", "--pin", "sha256/short"],
    ["client", "wss://127.0.0.1:1", "-L", "1:h:2", "--pin-only"],
    ["client", "wss://127.0.0.1:1", "-L", "1:h:2", "--tls-cert", "c.pem"],
    ["client", "wss://127.0.0.1:1", "-L", "1:h:2", "--insecure", "--ca-file", "x.pem"],
    ["server", "--allow", "*:*", "--tls-cert", "c.pem"],
    ["server", "--allow", "*:*", "--tls-ca", "ca.pem"],
    ["keygen", "--ip", "not-an-ip", "--cert", "/tmp/adit-never-1.pem", "--key", "/tmp/adit-never-2.pem"],
]


@pytest.mark.deadline(20)
@pytest.mark.parametrize("args", BAD, ids=lambda a: " ".join(a))
def test_tls_usage_errors_exit_64(adit_bin, args):
    p = subprocess.run([str(adit_bin), *args], capture_output=True, text=True, timeout=H.scaled(10), env=H._child_env())
    assert p.returncode == 64, (p.returncode, p.stderr)
    assert "Error:" in p.stderr


@pytest.mark.deadline(20)
def test_missing_certificate_files_are_one_sentence(adit_bin, tmp_path):
    p = subprocess.run([str(adit_bin), "server", "--allow", "*:*", "--listen", f"127.0.0.1:{H.free_port()}",
                        "--tls-cert", str(tmp_path / "none.pem"), "--tls-key", str(tmp_path / "none-key.pem")],
                       capture_output=True, text=True, timeout=H.scaled(10), env=H._child_env())
    assert p.returncode == 1, p.stderr
    assert f"--tls-cert {tmp_path / 'none.pem'} does not exist" in p.stderr, p.stderr
    assert not any(m in p.stderr for m in H.CRASH_MARKERS), p.stderr
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    p = subprocess.run([str(adit_bin), "server", "--allow", "*:*", "--listen", f"127.0.0.1:{H.free_port()}",
                        "--tls-cert", str(garbage), "--tls-key", str(garbage)],
                       capture_output=True, text=True, timeout=H.scaled(10), env=H._child_env())
    assert p.returncode == 1 and "cannot use --tls-cert" in p.stderr, p.stderr
    client = subprocess.run([str(adit_bin), "client", "wss://127.0.0.1:1/", "-L", "0:h:2", "--ca-file",
                             str(tmp_path / "nope.pem")], capture_output=True, text=True, timeout=H.scaled(10), env=H._child_env())
    assert client.returncode == 1 and "--ca-file" in client.stderr and "does not exist" in client.stderr, client.stderr


@pytest.mark.deadline(20)
def test_proxy_options_without_a_proxy_are_reported(adit):
    server = adit.server(["127.0.0.1:9"])
    client = adit.client(server.url, [(H.free_port(), "127.0.0.1", 9)], extra=["--proxy-user", "bob"])
    assert client.wait_for_log("are ignored: no proxy is in use (no proxy configured)")


@pytest.mark.skipif(not have("squid", "htpasswd"), reason="squid is needed (make test installs it)")
@pytest.mark.deadline(60)
def test_an_https_proxy_is_verified_and_carries_wss(adit, targets, pki, adit_bin, tmp_path):
    echo = targets.echo()
    server = wss_server(adit, echo.port, pki)
    proxy_cert, proxy_key, _, _ = keygen(adit_bin, tmp_path, "proxy", "--ip", "127.0.0.1")
    squid = Squid("noauth", tmp_path)
    front = TLSFront(proxy_cert, proxy_key, squid.port)
    try:
        # One --ca-file trusts both: this test's proxy and server certificates in one bundle.
        bundle = tmp_path / "bundle.pem"
        bundle.write_text(proxy_cert.read_text() + pki[0].read_text())
        ok, _ = wss_client(adit, server, echo.port, ["--proxy", f"https://127.0.0.1:{front.port}", "--ca-file", str(bundle)])
        assert front.handshakes >= 1
        ok.stop()   # squid (behind the TLS front) logs the tunnel when it ends
        wait_squid_tunnels(squid, server.port, 1)
        untrusted, _ = wss_client(adit, server, echo.port, ["--proxy", f"https://127.0.0.1:{front.port}",
                                                            "--ca-file", str(pki[0])], ready=False)
        line = untrusted.wait_for_log("cannot reach the tunnel server", timeout=10)
        assert "TLS to the proxy https://127.0.0.1" in line and "not trusted" in line, line
    finally:
        front.stop()
        squid.stop()
