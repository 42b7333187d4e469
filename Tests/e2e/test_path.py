"""--path: the server serves the tunnel on a path; a client with the wrong path is told to check it."""

import socket

import pytest

import e2e_helpers as H


@pytest.mark.deadline(45)
def test_tunnel_on_a_path_and_wrong_path_is_reported(adit, targets):
    echo = targets.echo()
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=["--path", "/tunnel"])
    good, bad = H.free_port(), H.free_port()
    adit.client(f"{server.url}/tunnel", [(good, "127.0.0.1", echo.port)],
                extra=["-H", "X-Team: ops", "--origin", "https://portal.example"])
    wrong = adit.client(f"{server.url}/other", [(bad, "127.0.0.1", echo.port)], wait=False)
    H.wait_tunnel_ready(good, timeout=15)
    with H.connect_local(good) as s:
        s.settimeout(H.scaled(10))
        s.sendall(b"through /tunnel")
        assert H.recv_exactly(s, 15) == b"through /tunnel"
        s.shutdown(socket.SHUT_WR)
        assert H.recv_until_eof(s) == b""
    # The reason, as adit words it: the status line's code and phrase, the paths the server serves and the hint,
    # on one line (a bare "404" could match a port number or a timestamp anywhere in the log). A wrong path does
    # not heal by retrying: the client stops (exit 1) after the first answer (issue 9).
    H.assert_stops(wrong)
    said = "the server answered the WebSocket upgrade with HTTP 404 Not Found"
    lines = wrong.log_lines_matching(said)
    assert len(lines) == 1, lines
    assert "this server serves /tunnel" in lines[0] and "(check the path in the URL" in lines[0], lines[0]
