"""Who may use the tunnel (issue 8): credentials checked before the 101 (tokens, passwords, client
certificates), per-user rules, browser Origins, the users file reloaded live, and secrets kept out of logs."""

import base64
import os
import re
import signal
import socket
import subprocess
import time

import pytest

import e2e_helpers as H

SCALE = H.timeout_scale()


def adit_token(adit_bin, name, *args, stdin=None):
    p = subprocess.run([str(adit_bin), "token", name, *args], capture_output=True, text=True, input=stdin,
                       timeout=20 * SCALE, env=H._child_env())
    assert p.returncode == 0, p.stderr
    return p.stdout


def make_token(adit_bin, name):
    out = adit_token(adit_bin, name)
    token = re.search(rf"token for {name}: (\S+)", out).group(1)
    digest = re.search(r"token: (sha256:[0-9a-f]{64})", out).group(1)
    return token, digest


def make_password(adit_bin, name, password):
    out = adit_token(adit_bin, name, "--password", stdin=password)
    return re.search(r"password: (scrypt:\S+)", out).group(1)


def users_file(path, entries):
    lines = ["users:"]
    for e in entries:
        lines.append(f"  - name: {e['name']}")
        for key in ("token", "password", "certificate"):
            if key in e:
                lines.append(f"    {key}: \"{e[key]}\"")
        for key in ("allow", "allow-reverse"):
            if key in e:
                lines.append(f"    {key}: [" + ", ".join(f'"{p}"' for p in e[key]) + "]")
    path.write_text("\n".join(lines) + "\n")
    return path


def client_with(adit, server, target_port, extra=(), env=None, wait=True):
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", target_port)], extra=list(extra), env=env, wait=wait)
    if wait:
        H.wait_tunnel_ready(local, timeout=15, proc=client)
    return client, local


def echo_once(port, payload=b"hello"):
    with H.connect_local(port) as s:
        s.settimeout(10 * SCALE)
        s.sendall(payload)
        return H.recv_exactly(s, len(payload))


def raw_upgrade(port, headers):
    """A hand-made upgrade request; returns the status line and the whole answer head."""
    key = base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET / HTTP/1.1", f"Host: 127.0.0.1:{port}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", "Sec-WebSocket-Version: 13"] + [f"{k}: {v}" for k, v in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=5 * SCALE) as s:
        s.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
    return head.split("\r\n", 1)[0], head


@pytest.mark.deadline(60)
def test_tokens_from_a_file_or_the_environment_and_none_or_a_wrong_one_refused(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    token, digest = make_token(adit_bin, "alice")
    users = users_file(tmp_path / "users.yaml", [{"name": "alice", "token": digest}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(users)])
    (tmp_path / "alice.token").write_text(token + "\n")

    _, by_file = client_with(adit, server, echo.port, ["--token-file", str(tmp_path / "alice.token")])
    assert echo_once(by_file) == b"hello"
    _, by_env = client_with(adit, server, echo.port, env={"ADIT_TOKEN": token})
    assert echo_once(by_env) == b"hello"
    server.wait_for_log("user=alice", timeout=5)

    accepted = echo.accepted
    for extra, env, why in [([], None, "needs credentials"), ([], {"ADIT_TOKEN": "not-the-token"}, "not one of this server's")]:
        client, local = client_with(adit, server, echo.port, extra, env=env, wait=False)
        assert client.popen.wait(15 * SCALE) == 1, "a refused client stops instead of retrying"
        line = client.log_lines_matching("401")[-1]
        assert why in line and "ADIT_TOKEN" in line, line
    assert echo.accepted == accepted, "no target is reached without an identity"


@pytest.mark.deadline(60)
def test_passwords_and_the_throttle_on_wrong_ones(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    users = users_file(tmp_path / "users.yaml", [{"name": "bob", "password": make_password(adit_bin, "bob", "s3cret")}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(users)])
    _, ok = client_with(adit, server, echo.port, ["--user", "bob"], env={"ADIT_PASSWORD": "s3cret"})
    assert echo_once(ok) == b"hello"
    # Wrong passwords: refused each time; after five, the address waits without its passwords being checked.
    auth = "Basic " + base64.b64encode(b"bob:wrong").decode()
    statuses = [raw_upgrade(server.port, [("Sec-WebSocket-Protocol", "adit.v1"), ("Authorization", auth)])
                for _ in range(7)]
    assert all(" 401 " in status for status, _ in statuses), statuses
    assert "WWW-Authenticate: Basic" in statuses[0][1]
    server.wait_for_log("too many wrong passwords", timeout=5)
    # an unknown user is refused with the same words as a wrong password
    client, _ = client_with(adit, server, echo.port, ["--user", "mallory"], env={"ADIT_PASSWORD": "x"}, wait=False)
    assert client.popen.wait(15 * SCALE) == 1


@pytest.mark.deadline(60)
def test_each_user_reaches_only_its_targets_and_binds(adit, adit_bin, targets, tmp_path):
    db, web = targets.echo(), targets.echo()
    ta, da = make_token(adit_bin, "alice")
    tb, dbb = make_token(adit_bin, "bob")
    users = users_file(tmp_path / "users.yaml", [
        {"name": "alice", "token": da, "allow": [f"127.0.0.1:{db.port}"], "allow-reverse": ["127.0.0.1:*"]},
        {"name": "bob", "token": dbb},   # the server's --allow
    ])
    server = adit.server([f"127.0.0.1:{web.port}"], extra=["--users", str(users)])
    alice_db, alice_web, rport = H.free_port(), H.free_port(), H.free_port()
    alice = adit.client(server.url, [(alice_db, "127.0.0.1", db.port), (alice_web, "127.0.0.1", web.port)],
                        extra=["-R", f"{rport}:127.0.0.1:{db.port}"], env={"ADIT_TOKEN": ta})
    H.wait_tunnel_ready(alice_db, timeout=15, proc=alice)
    assert H.refused_locally(alice_web) == ("reset", b"")
    alice.wait_for_log("not allowed by policy", timeout=5)
    alice.wait_for_log(f"the server listens on 127.0.0.1:{rport}", timeout=10)
    bob_db, bob_web = H.free_port(), H.free_port()
    bob = adit.client(server.url, [(bob_db, "127.0.0.1", db.port), (bob_web, "127.0.0.1", web.port)],
                      extra=["-R", f"{H.free_port()}:127.0.0.1:{web.port}"], env={"ADIT_TOKEN": tb})
    H.wait_tunnel_ready(bob_web, timeout=15, proc=bob)
    assert H.refused_locally(bob_db) == ("reset", b"")
    bob.wait_for_log("the server refused to listen", timeout=10)   # no --allow-reverse for bob


@pytest.mark.deadline(60)
def test_browser_origins_are_refused_unless_listed(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    token, digest = make_token(adit_bin, "page")
    users = users_file(tmp_path / "users.yaml", [{"name": "page", "token": digest}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(users),
                                                           "--allow-origin", "https://portal.example"])
    bearer = ("Sec-WebSocket-Protocol", f"adit.v1, adit.bearer.{token}")
    status, head = raw_upgrade(server.port, [bearer, ("Origin", "https://evil.example")])
    assert " 403 " in status, status
    status, head = raw_upgrade(server.port, [bearer, ("Origin", "https://portal.example")])
    assert " 101 " in status, status
    assert "Sec-WebSocket-Protocol: adit.v1" in head and "adit.bearer" not in head, "the token is never echoed"
    status, _ = raw_upgrade(server.port, [("Sec-WebSocket-Protocol", "adit.v1"), ("Origin", "https://portal.example")])
    assert " 401 " in status, "an allowed origin still needs credentials"


@pytest.mark.deadline(90)
def test_reload_applies_to_new_streams_closes_removed_users_and_keeps_old_rules_when_broken(adit, adit_bin, targets, tmp_path):
    first, second = targets.echo(), targets.echo()
    ta, da = make_token(adit_bin, "alice")
    tb, db = make_token(adit_bin, "bob")
    path = users_file(tmp_path / "users.yaml", [{"name": "alice", "token": da, "allow": [f"127.0.0.1:{first.port}"]},
                                                {"name": "bob", "token": db, "allow": [f"127.0.0.1:{first.port}"]}])
    server = adit.server([], extra=["--users", str(path)])
    a1, a2 = H.free_port(), H.free_port()
    alice = adit.client(server.url, [(a1, "127.0.0.1", first.port), (a2, "127.0.0.1", second.port)], env={"ADIT_TOKEN": ta})
    H.wait_tunnel_ready(a1, timeout=15, proc=alice)
    b1 = H.free_port()
    bob = adit.client(server.url, [(b1, "127.0.0.1", first.port)], env={"ADIT_TOKEN": tb})
    H.wait_tunnel_ready(b1, timeout=15, proc=bob)
    assert H.refused_locally(a2) == ("reset", b"")   # not yet allowed

    # alice gets the second target, bob is removed
    mark = server.log_mark()
    users_file(path, [{"name": "alice", "token": da, "allow": [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]}])
    server.wait_for_log("reloaded", timeout=10, since=mark)
    server.wait_for_log("user bob was removed", timeout=5, since=mark)
    assert echo_once(a2) == b"hello", "the new rule applies to alice's next stream on the same tunnel"
    bob.wait_for_log("tunnel lost", timeout=10)
    bob.popen.wait(15 * SCALE)
    assert bob.returncode == 1, "bob's token no longer works: the client stops"

    # a broken file is refused with its line; the rules in force stay
    mark = server.log_mark()
    path.write_text("users:\n  - name: alice\n    token: \"" + da + "\"\n    alow: []\n")
    line = server.wait_for_log("not reloading", timeout=10, since=mark)
    assert "users.yaml:4" in line and "alow" in line, line
    assert echo_once(a2) == b"hello"

    # SIGHUP reloads at once
    mark = server.log_mark()
    users_file(path, [{"name": "alice", "token": da, "allow": [f"127.0.0.1:{first.port}"]}])
    server.signal(signal.SIGHUP)
    server.wait_for_log("SIGHUP", timeout=5, since=mark)
    server.wait_for_log("reloaded", timeout=5, since=mark)
    assert H.refused_locally(a2) == ("reset", b"")
    assert alice.alive()


@pytest.mark.deadline(60)
def test_a_client_certificate_is_an_identity(adit, adit_bin, targets, tmp_path):
    from test_tls import keygen
    echo = targets.echo()
    server_cert, server_key, _, _ = keygen(adit_bin, tmp_path, "server", "--name", "localhost", "--ip", "127.0.0.1")
    client_cert, client_key, _, _ = keygen(adit_bin, tmp_path, "client", "--name", "carol.clients")
    users = users_file(tmp_path / "users.yaml", [{"name": "carol", "certificate": "DNS:carol.clients"}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(users), "--tls-cert", str(server_cert),
                                                           "--tls-key", str(server_key), "--tls-ca", str(client_cert)])
    local = H.free_port()
    client = adit.client(f"wss://127.0.0.1:{server.port}/", [(local, "127.0.0.1", echo.port)],
                         extra=["--ca-file", str(server_cert), "--tls-cert", str(client_cert), "--tls-key", str(client_key)])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    line = server.wait_for_log("tunnel opened", timeout=5)
    assert "user=carol" in line and "auth=certificate" in line, line


@pytest.mark.deadline(60)
def test_no_secret_reaches_a_log(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    token, digest = make_token(adit_bin, "alice")
    users = users_file(tmp_path / "users.yaml", [{"name": "alice", "token": digest},
                                                 {"name": "bob", "password": make_password(adit_bin, "bob", "pa55word-xyz")}])
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--users", str(users), "--log-level", "trace"])
    c1, l1 = client_with(adit, server, echo.port, ["--log-level", "trace"], env={"ADIT_TOKEN": token})
    c2, l2 = client_with(adit, server, echo.port, ["--user", "bob", "--log-level", "trace"], env={"ADIT_PASSWORD": "pa55word-xyz"})
    echo_once(l1)
    echo_once(l2)
    wrong, _ = client_with(adit, server, echo.port, ["--log-level", "trace"], env={"ADIT_TOKEN": token[::-1]}, wait=False)
    wrong.popen.wait(15 * SCALE)
    for proc in (server, c1, c2, wrong):
        text = proc.log_text()
        for secret in (token, token[::-1], "pa55word-xyz", base64.b64encode(b"bob:pa55word-xyz").decode()):
            assert secret not in text, f"{proc.name} logged a secret"
