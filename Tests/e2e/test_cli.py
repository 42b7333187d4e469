"""9. Command line: --version, --help of every command, usage errors exit 64 without a crash."""

import re
import subprocess

import pytest

import e2e_helpers as H

EX_USAGE = 64


def run(adit_bin, *args, timeout=10):
    timeout = H.scaled(timeout)
    try:
        p = subprocess.run([str(adit_bin), *args], stdin=subprocess.DEVNULL, capture_output=True,
                           timeout=timeout, env=H._child_env())
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"`adit {' '.join(args)}` still running after {timeout}s "
                    f"(stdout {e.stdout!r}, stderr {e.stderr!r})")
    return p.returncode, p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")


def assert_no_crash(text):
    bad = [m for m in H.CRASH_MARKERS if m.lower() in text.lower()]
    assert not bad, f"crash text {bad} in output:\n{text}"


@pytest.mark.deadline(20)
def test_version(adit_bin):
    rc, out, err = run(adit_bin, "--version")
    assert rc == 0, (rc, out, err)
    assert re.search(r"\d+\.\d+", out), f"no version number in {out!r}"
    assert_no_crash(out + err)


@pytest.mark.deadline(20)
@pytest.mark.parametrize("cmd,options", [
    ([], ["server", "client", "--version", "--help"]),
    (["server"], ["--listen", "--allow", "--log-level"]),
    (["client"], ["-L", "--log-level"]),
])
def test_help(adit_bin, cmd, options):
    rc, out, err = run(adit_bin, *cmd, "--help")
    assert rc == 0, (rc, out, err)
    text = out + err
    missing = [o for o in options if o not in text]
    assert not missing, f"`adit {' '.join(cmd)} --help` does not mention {missing}:\n{text}"
    assert_no_crash(text)


@pytest.mark.deadline(20)
@pytest.mark.parametrize("cmd", [["server"], ["client"]])
def test_help_short_flag(adit_bin, cmd):
    """-h is the short form of --help."""
    rc, out, err = run(adit_bin, *cmd, "-h")
    assert rc == 0, (rc, out, err)
    assert "--log-level" in out + err


BAD_USAGES = [
    ["client", "ws://127.0.0.1:1", "-L", "nonsense"],
    ["client", "ws://127.0.0.1:1", "-L", "99999:127.0.0.1:80"],
    ["client", "ws://127.0.0.1:1", "-L", "1234:127.0.0.1:0"],
    ["client", "ws://127.0.0.1:1", "-L", "1234:127.0.0.1"],
    ["client", "-L", "1234:127.0.0.1:80"],                              # no URL
    ["client", "not a url", "-L", "1234:127.0.0.1:80"],
    ["client", "ws://127.0.0.1:1", "-L", "1234:127.0.0.1:80", "--log-level", "loud"],
    ["server", "--listen", "127.0.0.1:{port}"],                         # no --allow
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "nocolon"],
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "*:abc"],
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "example.com:99999"],
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "10.0.0.0/40:22"],
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "[::1:*"],
    ["server", "--listen", "nonsense", "--allow", "*:*"],
    ["server", "--listen", "127.0.0.1:{port}", "--allow", "*:*", "--frobnicate"],
    ["frobnicate"],
]


@pytest.mark.deadline(20)
@pytest.mark.parametrize("args", BAD_USAGES, ids=lambda a: " ".join(a))
def test_usage_error_exits_64(adit_bin, args):
    port = H.free_port()
    args = [a.replace("{port}", str(port)) for a in args]
    rc, out, err = run(adit_bin, *args)
    assert_no_crash(out + err)
    assert rc == EX_USAGE, f"exit code {rc}, expected {EX_USAGE}; stdout {out!r} stderr {err!r}"
    assert err.strip(), f"no error message on stderr (stdout {out!r})"
    assert not H.port_listening(port), "the server bound its port despite the usage error"
