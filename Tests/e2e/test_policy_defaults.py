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


SPELLINGS = ["2130706433", "0177.0.0.1", "127.1", "0x7f.0.0.1"]


@pytest.mark.deadline(90)
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_other_spellings_of_loopback_are_loopback(adit, targets, spelling):
    """Decimal, octal, short and hex IPv4 and names with a trailing dot: each is whatever the resolver makes of it,
    and the policy judges that address. Under `*:*` each is refused; a rule naming loopback's addresses opens
    each (so the refusal is the policy's, not a name that failed to resolve)."""
    echo = targets.echo()
    broad = adit.server(["*:*"])
    local = H.free_port()
    client = adit.client(broad.url, [(local, spelling, echo.port)])
    assert H.refused_locally(local) == ("reset", b""), f"{spelling} reached the server's loopback under *:*"
    client.wait_for_log("not allowed by policy", timeout=10)
    assert echo.accepted == 0

    opened = adit.server(["*:*", "127.0.0.0/8:*"])
    other = H.free_port()
    client2 = adit.client(opened.url, [(other, spelling, echo.port)])
    H.wait_tunnel_ready(other, timeout=15, proc=client2)
    assert H.make_probe(other), f"{spelling} does not resolve to loopback here, so the refusal above proves nothing"


@pytest.mark.deadline(60)
@pytest.mark.parametrize("spelling", ["localhost.", "127.0.0.1."])
def test_trailing_dot_names_never_reach_loopback(adit, targets, spelling):
    """A trailing dot must not slip past a name rule's idea of loopback. glibc does not resolve these names at all
    (no hosts entry has the dot), so they end as unreachable; whichever way, nothing is connected."""
    echo = targets.echo()
    broad = adit.server(["*:*"])
    local = H.free_port()
    client = adit.client(broad.url, [(local, spelling, echo.port)])
    assert H.refused_locally(local) == ("reset", b"")
    line = client.wait_for_log(f"connection to {spelling}:{echo.port} failed", timeout=10)
    assert "not allowed by policy" in line or "did not resolve" in line, line
    assert echo.accepted == 0
