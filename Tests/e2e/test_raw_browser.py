"""Raw bridge against a real browser: headless chromium opens `new WebSocket(...)` to

    adit server --raw /echo=127.0.0.1:ECHOPORT --allow 127.0.0.1:ECHOPORT

whose target is a TCP echo server. The page (fixtures/raw_ws.html, served by fixtures/www_server.py) sends
a 200 KiB compressible JSON-ish binary message, 64 KiB from crypto.getRandomValues and a short text message,
one after the other, waits for each echo to be complete, compares it byte for byte, closes with 1000 and
writes its results as JSON into <pre id=out>, which chromium's --dump-dom prints.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

import e2e_helpers as H

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CHROMIUM = shutil.which("chromium")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Tests/e2e/ensure-deps.sh installs it)")

JSON_SIZE = 200 * H.KiB
RANDOM_SIZE = 64 * H.KiB          # crypto.getRandomValues gives at most 65536 bytes per call
TEXT = "héllo ✓ from chromium\n"  # the page's text message
TEXT_SIZE = len(TEXT.encode())
TOTAL = JSON_SIZE + RANDOM_SIZE + TEXT_SIZE

SUMMARY = re.compile(
    r"sent (\d+) compressed message\(s\), (\d+) -> (\d+) bytes \(ratio [\d.]+\), "
    r"(\d+) uncompressed \((\d+) bytes\); received (\d+) compressed, (\d+) -> (\d+) bytes")


# ---------------------------------------------------------------------------
# The page's web server (one per module) and chromium (one run per check)


@pytest.fixture(scope="module")
def www(tmp_path_factory):
    """fixtures/ served on 127.0.0.1 with GET /sleep?ms=N; yields its port."""
    port = H.free_port()
    log = tmp_path_factory.mktemp("www") / "www.log"
    proc = H.AditProcess("www", [sys.executable, str(FIXTURES / "www_server.py"), str(port), str(FIXTURES)], log)
    proc.start()
    try:
        H.wait_for_port(port, timeout=10, proc=proc)
        yield port
    finally:
        proc.stop(grace=3)


class Chromium:
    """One headless chromium run, in its own session; registered so that the e2e watchdog can kill it."""

    def __init__(self, name: str, argv: list[str], log_path: Path):
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.popen: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid if self.popen else -1

    def kill(self) -> None:
        """SIGKILL chromium and its helper processes (its own process group), by PID."""
        if self.popen is None:
            return
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.popen.wait(timeout=H.scaled(10))
        except subprocess.TimeoutExpired:
            pass
        with H._live_lock:
            H._live_procs.pop(self.popen.pid, None)

    def run(self, timeout: float) -> str:
        """Run to the end; return its stdout (the dumped DOM). Stderr (D-Bus noise and the like) goes to the log.
        `timeout` is scaled."""
        timeout = H.scaled(timeout)
        with open(self.log_path, "wb") as err:
            err.write(f"### {' '.join(self.argv)}\n".encode())
            err.flush()
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err,
                                          start_new_session=True, env=H._child_env())
        with H._live_lock:
            H._live_procs[self.popen.pid] = self
        try:
            out, _ = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"chromium did not finish within {timeout}s; stderr in {self.log_path}") from None
        finally:
            self.kill()   # the helpers it may have left behind, and the registration
        return out.decode(errors="replace")


_runs = 0


def run_page(www_port: int, tmp_path: Path, **params) -> dict:
    """Load raw_ws.html?params in headless chromium; return the JSON the page wrote into <pre id=out>."""
    global _runs
    _runs += 1
    profile = tmp_path / f"chromium-profile-{_runs}"     # fresh every run: no cache, no state
    url = f"http://127.0.0.1:{www_port}/raw_ws.html?" + urllib.parse.urlencode(params)
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-proxy-server",
            f"--user-data-dir={profile}", f"--virtual-time-budget={int(H.scaled(5000))}", "--dump-dom", url]
    chromium = Chromium(f"chromium-{_runs}", argv, tmp_path / f"chromium-{_runs}.log")
    try:
        dom = chromium.run(timeout=30)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    m = re.search(r'<pre id="out">(.*?)</pre>', dom, re.S)
    assert m, f"no <pre id=out> in chromium's DOM dump:\n{dom[:2000]}"
    text = html.unescape(m.group(1))
    assert text != "PENDING", (f"the page did not finish within chromium's virtual time budget "
                               f"(stderr: {chromium.log_path})")
    return json.loads(text)


def raw_server(adit, echo_port: int, extra: list[str] = ()) -> H.AditProcess:
    return adit.server([f"127.0.0.1:{echo_port}"], extra=["--raw", f"/echo=127.0.0.1:{echo_port}", *extra])


def check_echo_steps(res: dict) -> None:
    """The page's per-message results: every echo complete and equal, byte for byte."""
    assert res.get("result") == "OK", f"page result {res.get('result')!r}: {json.dumps(res, indent=1)}"
    steps = {s["name"]: s for s in res["steps"]}
    assert list(steps) == ["json", "random", "text"], res["steps"]
    for name, size in (("json", JSON_SIZE), ("random", RANDOM_SIZE), ("text", TEXT_SIZE)):
        s = steps[name]
        assert s["sent"] == size and s["received"] == size, s
        assert s["match"] and s["firstDiff"] == -1, f"{name}: echo differs from byte {s['firstDiff']}: {s}"
        assert s["sentSha256"] and s["sentSha256"] == s["echoSha256"], s
    assert "unexpectedText" not in res, "the bridge sent text messages; its echo must be binary"
    # the page closed with 1000 "done"; the server's answering close frame (whose reason the page sees) has 1000
    assert res["close"]["code"] == 1000 and res["close"]["wasClean"], res["close"]


def bridge_log(server: H.AditProcess) -> tuple[str, str]:
    """The server's `raw bridge opened` and `raw bridge closed` lines (exactly one of each)."""
    closed = server.wait_for_log("raw bridge closed", timeout=5)
    opened = server.log_lines_matching("raw bridge opened")
    assert len(opened) == 1, opened
    assert len(server.log_lines_matching("raw bridge closed")) == 1
    return opened[0], closed


def check_echo_target(echo: H.TargetServer) -> None:
    """One TCP connection to the target, which saw every byte the page sent and then EOF."""
    results = echo.wait_results(1, timeout=5)
    assert echo.accepted == 1
    assert results == [TOTAL]


# ---------------------------------------------------------------------------
# Tests


@pytest.mark.deadline(40)
@pytest.mark.parametrize("proto", ["", "binary"], ids=["no-subprotocol", "subprotocol-binary"])
def test_chromium_echo_with_permessage_deflate(adit, targets, www, tmp_path, proto):
    echo = targets.echo()
    server = raw_server(adit, echo.port)
    params = {"url": f"{server.url}/echo", "json": JSON_SIZE, "random": RANDOM_SIZE, "text": 1}
    if proto:
        params["proto"] = proto
    res = run_page(www, tmp_path, **params)
    print("page:", json.dumps({k: v for k, v in res.items() if k != "steps"}))

    assert res["extensions"].startswith("permessage-deflate"), f"negotiated extensions: {res['extensions']!r}"
    assert res["protocol"] == proto
    check_echo_steps(res)

    opened, closed = bridge_log(server)
    print(opened)
    print(closed)
    assert "compression=permessage-deflate" in opened, opened
    assert f"subprotocol={proto or 'none'} " in opened, opened
    assert f"target=127.0.0.1:{echo.port}" in opened, opened
    assert "HeadlessChrome" in opened, opened
    m = SUMMARY.search(closed)
    assert m, f"unexpected summary: {closed}"
    (sent_c, sent_before, sent_after, sent_plain, sent_plain_bytes,
     recv_c, recv_wire, recv_inflated) = map(int, m.groups())
    # Chromium compresses what it sends; the JSON message compresses well.
    assert recv_c >= 1, closed
    assert recv_inflated <= TOTAL and recv_inflated - recv_wire > JSON_SIZE // 2, closed
    # The server sent exactly the echo, compressing (auto) at least the JSON part of it.
    assert sent_before + sent_plain_bytes == TOTAL, closed
    assert sent_c >= 1 and sent_before - sent_after > JSON_SIZE // 2, closed
    check_echo_target(echo)


@pytest.mark.deadline(40)
def test_chromium_echo_with_compression_off(adit, targets, www, tmp_path):
    echo = targets.echo()
    server = raw_server(adit, echo.port, extra=["--compression", "off"])
    res = run_page(www, tmp_path, url=f"{server.url}/echo", proto="binary",
                   json=JSON_SIZE, random=RANDOM_SIZE, text=1)
    print("page:", json.dumps({k: v for k, v in res.items() if k != "steps"}))

    assert res["extensions"] == "", f"negotiated extensions with --compression off: {res['extensions']!r}"
    assert res["protocol"] == "binary"
    check_echo_steps(res)

    opened, closed = bridge_log(server)
    print(opened)
    print(closed)
    assert "compression=none" in opened, opened
    assert "permessage-deflate" not in opened, opened
    assert "compressed" not in closed, closed
    check_echo_target(echo)


@pytest.mark.deadline(40)
def test_chromium_unsupported_subprotocol_is_refused(adit, targets, www, tmp_path):
    """A page that offers only a subprotocol the bridge does not speak (`base64`): the upgrade is refused
    with HTTP 400, the page's WebSocket fails (1006), and the target is never connected."""
    echo = targets.echo()
    server = raw_server(adit, echo.port)
    res = run_page(www, tmp_path, url=f"{server.url}/echo", proto="base64", text=1)
    print("page:", json.dumps(res))
    assert res["result"] == "CLOSED", res
    assert res["close"]["code"] == 1006 and not res["close"]["wasClean"], res["close"]
    assert "extensions" not in res, "the WebSocket opened"
    line = server.wait_for_log("refused HTTP request", timeout=5)
    assert "status=400" in line and "uri=/echo" in line, line
    assert not server.log_lines_matching("raw bridge opened")
    assert echo.accepted == 0


@pytest.mark.deadline(60)
def test_a_browser_page_needs_its_origin_listed_and_a_token(adit, adit_bin, targets, www, tmp_path):
    """Issue 8 in a real browser: with users configured, a page may use the raw bridge only when --allow-origin
    lists it and it presents a token as a subprotocol (it cannot set Authorization)."""
    from test_identities import make_token, users_file
    echo = targets.echo()
    token, digest = make_token(adit_bin, "page")
    users = users_file(tmp_path / "users.yaml", [{"name": "page", "token": digest}])
    page_origin = f"http://127.0.0.1:{www}"
    listed = raw_server(adit, echo.port, ["--users", str(users), "--allow-origin", page_origin])
    unlisted = raw_server(adit, echo.port, ["--users", str(users), "--allow-origin", "https://portal.example"])
    small = {"json": 1024, "random": 0, "text": 0}
    ok = run_page(www, tmp_path, url=f"{listed.url}/echo", proto=f"binary,adit.bearer.{token}", **small)
    assert ok.get("result") == "OK", ok
    assert ok.get("protocol") == "binary", "the token is never selected as the subprotocol"
    listed.wait_for_log("user=page", timeout=5)
    no_token = run_page(www, tmp_path, url=f"{listed.url}/echo", proto="binary", **small)
    assert no_token.get("result") != "OK", no_token
    listed.wait_for_log("tunnel refused (401)", timeout=5)
    wrong_origin = run_page(www, tmp_path, url=f"{unlisted.url}/echo", proto=f"binary,adit.bearer.{token}", **small)
    assert wrong_origin.get("result") != "OK", wrong_origin
    line = unlisted.wait_for_log("tunnel refused (403)", timeout=5)
    assert page_origin in line, line
    assert echo.accepted == 1, "only the admitted page reached the target"
