"""Prometheus metrics: --metrics serves /metrics with tunnel, stream, byte and reset counters."""

import re
import socket
import time
import urllib.request

import pytest

import e2e_helpers as H


def scrape(port: int) -> dict[str, float]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=H.scaled(5)).read().decode()
    values = {}
    for line in body.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        values[name] = float(value)
    return values


def wait_metric(port: int, name: str, predicate, timeout: float = 10.0) -> dict[str, float]:
    """Scrape until `name` is there and satisfies `predicate`; fail after `timeout` seconds (scaled)."""
    deadline = time.monotonic() + H.scaled(timeout)
    while True:
        values = scrape(port)
        if name in values and predicate(values[name]):
            return values
        if time.monotonic() > deadline:
            raise AssertionError(f"{name} never satisfied the check; last scrape: {values}")
        time.sleep(0.2)


@pytest.mark.deadline(60)
def test_metrics_count_streams_bytes_and_resets(adit, targets):
    echo = targets.echo()
    denied_port = H.free_port()
    server_metrics, client_metrics = H.free_port(), H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--metrics", f"127.0.0.1:{server_metrics}"])
    fwd, denied_fwd = H.free_port(), H.free_port()
    adit.client(server.url, [(fwd, "127.0.0.1", echo.port), (denied_fwd, "127.0.0.1", denied_port)],
                extra=["--metrics", f"127.0.0.1:{client_metrics}"])
    H.wait_for_port(server_metrics, timeout=10, proc=server, connect=False)
    H.wait_for_port(client_metrics, timeout=10, connect=False)
    H.wait_tunnel_ready(fwd, timeout=15)

    payload = b"x" * 300_000
    with H.connect_local(fwd) as s:
        s.settimeout(H.scaled(10))
        s.sendall(payload)
        assert H.recv_exactly(s, len(payload)) == payload
    # denied by policy: reset with reason not_allowed, and the local connection aborted
    assert H.refused_locally(denied_fwd) == ("reset", b""), "a refused stream must abort the local connection"

    sent = 'adit_stream_bytes_total{direction="sent"}'
    values = wait_metric(client_metrics, sent, lambda v: v >= len(payload))
    assert values['adit_stream_bytes_total{direction="received"}'] >= len(payload)
    assert values['adit_streams_opened_total{origin="local"}'] >= 3   # probe, echo, denied
    assert values["adit_tunnels_open"] == 1
    assert values["adit_tunnels_opened_total"] >= 1

    values = wait_metric(server_metrics, 'adit_stream_resets_total{reason="not_allowed"}', lambda v: v >= 1)
    assert values['adit_streams_opened_total{origin="peer"}'] >= 3
    assert values['adit_stream_bytes_total{direction="received"}'] >= len(payload)

    # Anything but GET /metrics is a short 404, not a crash.
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://127.0.0.1:{server_metrics}/", timeout=H.scaled(5))
    assert info.value.code == 404


@pytest.mark.deadline(30)
def test_metrics_bad_address_is_a_usage_error(adit_bin):
    import subprocess
    r = subprocess.run([str(adit_bin), "server", "--allow", "*:*", "--metrics", "nonsense"],
                       capture_output=True, text=True, timeout=H.scaled(10))
    assert r.returncode == 64
    assert "--metrics" in r.stderr
