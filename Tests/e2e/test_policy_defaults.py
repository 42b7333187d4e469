"""Secure defaults (issue 8): a broad rule never opens the server's loopback, link-local or metadata addresses —
checked on the address actually connected, after resolution — and an IPv4-mapped IPv6 address is its IPv4 host."""

import pytest

import e2e_helpers as H


@pytest.mark.deadline(60)
@pytest.mark.parametrize("target", ["127.0.0.1", "localhost", "::ffff:127.0.0.1", "127.1.2.3", "0.0.0.0"])
def test_a_broad_rule_does_not_reach_the_servers_own_loopback(adit, targets, target):
    echo = targets.echo(host="0.0.0.0")       # listens on every address, so a connection would succeed
    server = adit.server(["*:*", "[::/0]:*"])
    local = H.free_port()
    client = adit.client(server.url, [(local, target, echo.port)])   # the fixture adds brackets to IPv6
    assert H.refused_locally(local) == ("reset", b"")
    line = client.wait_for_log("not allowed by policy", timeout=10)
    assert "address" in line and "allow it by name" in line, line
    assert echo.accepted == 0, "the server connected to an address its defaults deny"


@pytest.mark.deadline(60)
def test_metadata_addresses_are_refused_without_a_connect_attempt(adit, targets):
    server = adit.server(["*:*", "169.254.0.0/16:*"])   # link-local named as a whole still leaves the metadata service out
    local = H.free_port()
    client = adit.client(server.url, [(local, "169.254.169.254", 80)])
    assert H.refused_locally(local) == ("reset", b"")
    line = client.wait_for_log("not allowed by policy", timeout=10)
    assert "metadata-service" in line, line
    assert "timed out" not in client.log_text() and "unreachable" not in client.log_text()


@pytest.mark.deadline(60)
def test_rules_that_name_the_address_open_it(adit, targets):
    echo = targets.echo()
    server = adit.server(["*:*", f"127.0.0.1:{echo.port}"])
    local = H.free_port()
    client = adit.client(server.url, [(local, "127.0.0.1", echo.port)])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    named = adit.server([f"localhost:{echo.port}"])
    by_name = H.free_port()
    c2 = adit.client(named.url, [(by_name, "localhost", echo.port)])
    H.wait_tunnel_ready(by_name, timeout=15, proc=c2)
