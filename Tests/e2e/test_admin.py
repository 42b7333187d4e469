"""The admin listener (`--admin HOST:PORT`, issue 9): /healthz, /readyz following the tunnel down and up (client)
and the drain (server), /metrics parsed by prometheus_client with HELP lines and counters that move, /status.json
with the sessions that exist, and the /status page rendered by headless Chromium showing a live session."""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import e2e_helpers as H

CHROMIUM = shutil.which("chromium")


def get(port: int, path: str) -> tuple[int, str, str]:
    """(status, content type, body) of GET http://127.0.0.1:port/path."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=H.scaled(5)) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read().decode()


def status_json(port: int) -> dict:
    code, kind, body = get(port, "/status.json")
    assert code == 200 and kind.startswith("application/json"), (code, kind, body)
    return json.loads(body)


def wait_ready(port: int, want: int, timeout: float = 10) -> None:
    H.wait_until(lambda: get(port, "/readyz")[0] == want, timeout, what=f"/readyz to answer {want}")


def echo_once(local: int, payload: bytes = b"admin") -> None:
    with H.connect_local(local) as s:
        s.sendall(payload)
        assert H.recv_exactly(s, len(payload)) == payload


@pytest.mark.deadline(90)
def test_client_readyz_follows_the_tunnel_down_and_up(adit, targets):
    echo = targets.echo()
    port = H.free_port()
    admin = H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], port=port)
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)], extra=["--admin", f"127.0.0.1:{admin}"])
    H.wait_for_port(admin, timeout=10, proc=client, connect=False)
    assert get(admin, "/healthz")[:1] == (200,)
    wait_ready(admin, 200)
    echo_once(local)
    st = status_json(admin)
    assert st["role"] == "client" and st["ready"] and st["state"] == "tunnel up", st
    assert any(d == f"-L 127.0.0.1:{local}:127.0.0.1:{echo.port}" or f":{local}" in d for d in st["details"]), st
    assert len(st["sessions"]) == 1 and st["sessions"][0]["peer"] == f"ws://127.0.0.1:{port}/", st
    assert st["sessions"][0]["bytesSent"] >= 5, st
    # The server goes away: not ready (the process is still healthy), then ready again once it is back.
    server.stop()
    wait_ready(admin, 503)
    assert get(admin, "/healthz")[0] == 200
    assert status_json(admin)["state"].startswith(("waiting to redial", "dialing")), status_json(admin)
    adit.server([f"127.0.0.1:{echo.port}"], port=port)
    wait_ready(admin, 200, timeout=30)
    echo_once(local)


@pytest.mark.deadline(90)
def test_server_readyz_is_503_while_it_drains_and_status_lists_sessions(adit, targets):
    echo = targets.echo()
    admin = H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--admin", f"127.0.0.1:{admin}", "--drain-timeout", "20"])
    local = H.free_port()
    adit.client(server.url, [(local, "127.0.0.1", echo.port)])
    wait_ready(admin, 200)
    held = H.connect_local(local)
    held.sendall(b"x" * 1000)
    assert H.recv_exactly(held, 1000) == b"x" * 1000
    st = status_json(admin)
    assert st["role"] == "server" and st["state"] == "listening", st
    assert len(st["sessions"]) == 1, st
    row = st["sessions"][0]
    assert row["identity"] == "-" and row["peer"].startswith("127.0.0.1:") and row["streams"] == 1, row
    assert row["bytesSent"] >= 1000 and row["bytesReceived"] >= 1000 and row["state"] == "up", row
    # SIGTERM: the stream is still open, so the server drains; meanwhile /readyz says 503 and /healthz 200.
    server.signal(signal.SIGTERM)
    wait_ready(admin, 503)
    assert get(admin, "/healthz")[0] == 200
    assert status_json(admin)["state"] == "draining"
    held.close()
    H.wait_until(lambda: server.poll() is not None, 15, what="the server to exit after its last stream")
    assert server.returncode == 0


@pytest.mark.deadline(60)
def test_metrics_parse_with_help_lines_and_counters_move(adit, targets):
    parser = pytest.importorskip("prometheus_client.parser")
    echo = targets.echo()
    admin = H.free_port()
    t = adit.tunnel([echo.port], server_extra=["--admin", f"127.0.0.1:{admin}"])

    def families() -> dict:
        code, kind, body = get(admin, "/metrics")
        assert code == 200 and kind.startswith("text/plain"), (code, kind)
        return {f.name: f for f in parser.text_string_to_metric_families(body)}, body

    before, body = families()
    assert "# HELP adit_tunnels_open Tunnels up now." in body, body[:2000]
    for name in ("adit_tunnels_open", "adit_stream_bytes", "adit_streams_opened"):
        assert name in before, sorted(before)
        assert before[name].documentation, f"{name} has no HELP text"
    sent = lambda fams: sum(s.value for s in fams["adit_stream_bytes"].samples if s.labels.get("direction") == "sent")
    echo_once(t.ports[0], b"m" * 4000)
    H.wait_until(lambda: sent(families()[0]) >= sent(before) + 4000, 5, what="adit_stream_bytes_total to move")
    assert families()[0]["adit_tunnels_open"].samples[0].value == 1


@pytest.mark.deadline(30)
def test_admin_on_an_address_in_use_stops_the_program(adit):
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        proc = adit.server(["127.0.0.1:9"], wait=False, extra=["--admin", f"127.0.0.1:{holder.getsockname()[1]}"])
        H.assert_stops(proc)
        assert "cannot serve the admin listener on 127.0.0.1:" in proc.log_text() and "already in use" in proc.log_text()
    finally:
        holder.close()


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Tests/e2e/ensure-deps.sh installs it)")
@pytest.mark.deadline(90)
def test_the_status_page_renders_a_live_session_in_chromium(adit, targets, tmp_path):
    from test_raw_browser import Chromium
    echo = targets.echo()
    admin = H.free_port()
    t = adit.tunnel([echo.port], server_extra=["--admin", f"127.0.0.1:{admin}"])
    echo_once(t.ports[0], b"s" * 300_000)
    peer = status_json(admin)["sessions"][0]["peer"]
    code, kind, page = get(admin, "/status")
    assert code == 200 and kind.startswith("text/html"), (code, kind)
    assert not re.search(r'(src|href)="(https?:)?//', page), "the page must not load anything from elsewhere"
    url = f"http://127.0.0.1:{admin}/status"
    common = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-proxy-server",
              f"--virtual-time-budget={int(H.scaled(3000))}"]
    dom = Chromium("chromium-status", common + [f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", url],
                   tmp_path / "chromium-status.log").run(timeout=45)
    rows = re.findall(r'<tr class="session">(.*?)</tr>', dom, re.S)
    assert len(rows) == 1, dom[:3000]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", rows[0])
    assert cells[1] == peer and cells[2] == "up", cells
    assert cells[6] == "0 B", cells   # the receive windows of open streams: none is open now
    assert re.fullmatch(r"29\d\.\d KiB", cells[7]) or re.fullmatch(r"\d+\.\d KiB", cells[7]), cells
    assert 'class="badge ok">ready<' in dom, dom[:2000]
    shot = tmp_path / "status.png"
    Chromium("chromium-shot", common + [f"--user-data-dir={tmp_path / 'p2'}", "--window-size=1100,420",
                                        f"--screenshot={shot}", "--hide-scrollbars", url],
             tmp_path / "chromium-shot.log").run(timeout=45)
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, len(data)
    keep = Path(__file__).resolve().parents[2] / "docs" / "status-page.png"
    if not keep.exists():
        keep.write_bytes(data)
