"""Adit runs without privileges (as a sidecar usually does): server and client as `nobody`.

A socket option set at the wrong level (SO_DEBUG instead of TCP_NODELAY) once made every tunnel fail with
EACCES for anyone but root; the rest of the suite runs as root in CI and could not see it."""

import os
import shutil

import pytest

import e2e_helpers as H


@pytest.mark.deadline(40)
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root (to drop to nobody) and setpriv; unprivileged runs already cover this")
@pytest.mark.ci_may_skip(os.geteuid() != 0, reason="a run without root is itself the unprivileged run this "
                                                  "test stands in for (a missing setpriv is still a failure)")
def test_server_and_client_work_as_nobody(adit, targets, tmp_path):
    echo = targets.echo()
    drop = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
    port, local = H.free_port(), H.free_port()
    server = H.AditProcess("adit-server-nobody", [*drop, adit.bin, "server", "--listen", f"127.0.0.1:{port}",
                                                  "--allow", f"127.0.0.1:{echo.port}"], tmp_path / "server.log")
    client = H.AditProcess("adit-client-nobody", [*drop, adit.bin, "client", f"ws://127.0.0.1:{port}",
                                                  "-L", f"127.0.0.1:{local}:127.0.0.1:{echo.port}"], tmp_path / "client.log")
    adit.procs += [server, client]
    server.start()
    H.wait_for_port(port, timeout=10, proc=server, connect=False)
    client.start()
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    payload = os.urandom(1 << 20)
    with H.connect_local(local, timeout=10) as s:
        s.settimeout(H.scaled(10))
        s.sendall(payload)
        assert H.recv_exactly(s, len(payload)) == payload
    assert "Permission denied" not in client.log_text() + server.log_text()
