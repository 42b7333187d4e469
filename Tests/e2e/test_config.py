"""One configuration (issue 9): every option from the command line, an ADIT_* variable or the --config file, in that
order of precedence; `adit check-config`; errors that name the file's line or the variable; SIGHUP reloads what
can change while running and says what needs a restart."""

from __future__ import annotations

import re
import signal
import subprocess

import e2e_helpers as H


def run(adit_bin, args, env=None, timeout=20) -> subprocess.CompletedProcess:
    return subprocess.run([str(adit_bin), *map(str, args)], capture_output=True, text=True,
                          timeout=H.scaled(timeout), env={**H._child_env(), **(env or {})})


def listening_port(proc: H.AditProcess) -> int:
    line = proc.wait_for_log("listening on ws://127.0.0.1:", timeout=10)
    return int(line.split("listening on ws://127.0.0.1:")[1].split("/")[0])


def test_flags_win_over_variables_which_win_over_the_file(adit, tmp_path):
    file_port, env_port, flag_port = H.free_port(), H.free_port(), H.free_port()
    config = tmp_path / "adit.yaml"
    config.write_text(f"server:\n  listen: 127.0.0.1:{file_port}\n  allow: [127.0.0.1:9]\n  keepalive: 7\n")

    only_file = adit._start("server", ["--config", str(config)])
    assert listening_port(only_file) == file_port
    only_file.stop()

    env = {"ADIT_LISTEN": f"127.0.0.1:{env_port}"}
    with_env = adit._start("server", ["--config", str(config)], env=env)
    assert listening_port(with_env) == env_port
    with_env.stop()

    with_flag = adit._start("server", ["--config", str(config), "--listen", f"127.0.0.1:{flag_port}"], env=env)
    assert listening_port(with_flag) == flag_port
    with_flag.stop()

    # ADIT_CONFIG names the file when --config does not
    from_variable = adit._start("server", [], env={"ADIT_CONFIG": str(config)})
    assert listening_port(from_variable) == file_port


def test_a_client_entirely_from_variables_carries_bytes(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit._start("client", [], env={"ADIT_SERVER": server.url,
                                            "ADIT_FORWARD": f"127.0.0.1:{local}:127.0.0.1:{echo.port}"})
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    assert H.make_probe(local)


def test_check_config_prints_values_their_sources_and_masks_secrets(adit_bin, tmp_path):
    config = tmp_path / "adit.yaml"
    config.write_text(
        "server:\n"
        "  listen: 127.0.0.1:8080\n"
        "  allow:\n"
        "    - db.internal:5432\n"
        "client:\n"
        "  server: ws://127.0.0.1:8080/\n"
        "  forward: [5432:db.internal:5432]\n"
        "  proxy: http://alice:s3cret-pw@proxy.corp:3128\n"
        "  header: ['Authorization: Bearer top-secret-token', 'X-Team: blue']\n")
    r = run(adit_bin, ["check-config", "--config", config],
            env={"ADIT_KEEPALIVE": "20", "ADIT_TOKEN": "token-value-xyz", "ADIT_LISTN": "typo"})
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert "adit server: valid" in out and "adit client: valid" in out

    def row(key: str, section: str) -> str:
        part = out.split(f"adit {section}:")[1]
        return next(l for l in part.splitlines() if l.strip().startswith(key + " "))

    assert "127.0.0.1:8080" in row("listen", "server") and f"{config} line 2 (server.listen)" in row("listen", "server")
    assert f"{config} line 3 (server.allow)" in row("allow", "server")
    assert "20" in row("keepalive", "server") and "environment ADIT_KEEPALIVE" in row("keepalive", "server")
    assert "default" in row("drain-timeout", "server") and "30" in row("drain-timeout", "server")
    assert "http://alice:****@proxy.corp:3128" in row("proxy", "client")
    assert "Authorization: ****" in out and "X-Team: blue" in out
    for secret in ("s3cret-pw", "top-secret-token", "token-value-xyz"):
        assert secret not in out, f"{secret} printed"
    assert "ADIT_TOKEN=****" in out
    assert "ADIT_LISTN is not an adit setting (did you mean ADIT_LISTEN?)" in out


def test_check_config_fails_with_the_line_or_the_variable(adit_bin, tmp_path):
    bad_key = tmp_path / "bad-key.yaml"
    bad_key.write_text("server:\n  listen: 127.0.0.1:8080\n  alow: ['a:1']\n")
    r = run(adit_bin, ["check-config", "--config", bad_key])
    assert r.returncode == 64
    assert f"{bad_key} line 3: server.alow: not an option of `adit server` (did you mean `allow`?)" in r.stderr

    bad_value = tmp_path / "bad-value.yaml"
    bad_value.write_text("server:\n  allow: ['a:1']\n  keepalive: soon\n")
    r = run(adit_bin, ["check-config", "--config", bad_value])
    assert r.returncode == 64 and "adit server: NOT valid" in r.stdout
    assert f"(--keepalive came from {bad_value} line 3 (server.keepalive))" in r.stdout

    r = run(adit_bin, ["check-config", "server"], env={"ADIT_ALLOW": "a:1", "ADIT_DRAIN_TIMEOUT": "-5"})
    assert r.returncode == 64
    assert "--drain-timeout cannot be negative (--drain-timeout came from environment ADIT_DRAIN_TIMEOUT)" in r.stdout

    r = run(adit_bin, ["check-config"])
    assert r.returncode == 64 and "give --config FILE" in r.stderr


def test_the_commands_refuse_a_bad_file_or_variable_at_start_up(adit_bin, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  allow: ['a:1']\n  listen: [127.0.0.1:1, 127.0.0.1:2]\n")
    r = run(adit_bin, ["server", "--config", bad])
    assert r.returncode == 64 and f"{bad} line 3: server.listen: takes one value, not a list" in r.stderr

    r = run(adit_bin, ["server", "--config", tmp_path / "missing.yaml"])
    assert r.returncode == 64 and "missing.yaml: does not exist" in r.stderr

    broken = tmp_path / "broken.yaml"
    broken.write_text("server:\n  allow: ['a:1'\n")
    r = run(adit_bin, ["server", "--config", broken])
    assert r.returncode == 64 and f"{broken} line" in r.stderr and "is not valid YAML" in r.stderr

    r = run(adit_bin, ["server", "--allow", "a:1"], env={"ADIT_KEEPALIVE": "often"})
    assert r.returncode == 64
    assert "'often' is invalid for '--keepalive <seconds>' (--keepalive came from environment ADIT_KEEPALIVE)" in r.stderr

    r = run(adit_bin, ["client", "ws://127.0.0.1:1/", "-L", "1:a:2"], env={"ADIT_INSECURE": "perhaps"})
    assert r.returncode == 64 and "ADIT_INSECURE=perhaps: a switch takes true or false" in r.stderr


def test_sighup_reloads_the_rules_and_keeps_them_when_the_file_breaks(adit, targets, tmp_path):
    allowed, later = targets.echo(), targets.echo()
    port = H.free_port()
    config = tmp_path / "adit.yaml"

    def write(allow: list[int], keepalive: int = 15, extra: str = "") -> None:
        rules = ", ".join(f"'127.0.0.1:{p}'" for p in allow)
        config.write_text(f"server:\n  listen: 127.0.0.1:{port}\n  allow: [{rules}]\n  keepalive: {keepalive}\n{extra}")

    write([allowed.port])
    server = adit._start("server", ["--config", str(config)], log_level_arg=False)
    server.wait_for_log(f"listening on ws://127.0.0.1:{port}/", timeout=10)
    first, second = H.free_port(), H.free_port()
    client = adit.client(f"ws://127.0.0.1:{port}", [(first, "127.0.0.1", allowed.port), (second, "127.0.0.1", later.port)])
    H.wait_tunnel_ready(first, timeout=15, proc=client)
    assert H.refused_locally(second)[0] == "reset"

    # The open tunnel follows the new rules: no reconnect needed.
    write([allowed.port, later.port], keepalive=5, extra="  log-level: debug\n")
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(f"configuration reloaded: allow is now 127.0.0.1:{allowed.port}, 127.0.0.1:{later.port}",
                        timeout=10, since=mark)
    server.wait_for_log("configuration reloaded: log-level is now debug", timeout=5, since=mark)
    server.wait_for_log("keepalive changed; it takes effect after a restart", timeout=5, since=mark)
    assert H.make_probe(second), "the newly allowed target is still refused"
    assert len(server.log_lines_matching("tunnel opened")) == 1
    server.wait_for_log(" debug ", timeout=5, since=mark)  # the new level is in force

    # A broken file: refused with its line, and the rules in force stay.
    config.write_text(config.read_text() + "  alow: ['x:1']\n")
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    line = server.wait_for_log("not reloading the configuration", timeout=10, since=mark)
    assert f"{config} line 6: server.alow" in line and "the settings in force stay" in line
    assert H.make_probe(second) and H.make_probe(first)

    # Narrowed again: the open tunnel loses the target.
    write([allowed.port], keepalive=5, extra="  log-level: debug\n")
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(f"configuration reloaded: allow is now 127.0.0.1:{allowed.port}", timeout=10, since=mark)
    assert H.refused_locally(second)[0] == "reset"
    assert H.make_probe(first)
    assert server.alive() and client.alive()


def test_sighup_reloads_the_users_file_and_the_config_file_together(adit, adit_bin, tmp_path):
    """Both listen for SIGHUP; neither may silence the other (a second signal(SIG_IGN) would, on Linux)."""
    users = tmp_path / "users.yaml"
    r = run(adit_bin, ["token", "alice"])
    assert r.returncode == 0, r.stderr
    digest = re.search(r"token: (sha256:[0-9a-f]{64})", r.stdout + r.stderr).group(1)
    users.write_text(f"users:\n  - name: alice\n    token: {digest}\n")
    port = H.free_port()
    config = tmp_path / "adit.yaml"
    config.write_text(f"server:\n  listen: 127.0.0.1:{port}\n  users: {users}\n  allow: ['127.0.0.1:9']\n")
    server = adit._start("server", ["--config", str(config)], log_level_arg=False)
    server.wait_for_log(f"listening on ws://127.0.0.1:{port}/", timeout=10)
    mark = server.log_mark()
    server.signal(signal.SIGHUP)
    server.wait_for_log(f"SIGHUP: reloading {users}", timeout=10, since=mark)
    server.wait_for_log("SIGHUP: reading the configuration again", timeout=10, since=mark)
    assert server.alive()
