#!/usr/bin/env python3
"""Writes the seed inputs of Tests/Fuzz/Corpus/<target>/ (valid and near-valid examples each target starts from).
Run it again after changing a target's input layout; libFuzzer's finds worth keeping go beside the seeds.

Layouts (see Tests/Fuzz/Targets/FuzzTarget.swift): most targets read a chunk-size byte first (0 = one chunk);
some read a selector byte before that."""

import random
import socket
import struct
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
import e2e_helpers as H  # noqa: E402 - frame builders shared with the end-to-end tests

CORPUS = Path(__file__).resolve().parent / "Corpus"
WHOLE = b"\x00"          # one chunk
SPLIT = b"\x02"          # 3-byte chunks


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def ws_frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = b"\x01\x02\x03\x04", rsv1=False) -> bytes:
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, m | n])
    elif n < 65536:
        head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    if mask:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
        return head + mask + payload
    return head + payload


def main() -> None:
    hello = H.mux_hello()
    open_tcp = H.mux_frame(H.MUX_OPEN, 1, H.mux_ipv4_target("127.0.0.1", 22))
    data = H.mux_frame(H.MUX_DATA, 1, b"hello")
    fin = H.mux_frame(H.MUX_DATA, 1, b"", flags=H.MUX_FIN)
    reset = H.mux_frame(H.MUX_RESET, 1, struct.pack(">I", 1) + b"no")
    window = H.mux_frame(H.MUX_WINDOW_UPDATE, 1, struct.pack(">I", 65536))
    ping = H.mux_frame(H.MUX_PING, 0, b"12345678")
    goaway = H.mux_frame(H.MUX_GOAWAY, 0, struct.pack(">II", 0, 0) + b"bye")
    write("mux-frames", "hello", hello)
    write("mux-frames", "open-data-fin", open_tcp + data + fin)
    write("mux-frames", "control", window + ping + reset + goaway)
    write("mux-frames", "truncated", (open_tcp + data)[:-3])
    write("mux-session", "open-data-fin", WHOLE + open_tcp + data + fin)
    write("mux-session", "open-split", SPLIT + open_tcp + window + data + data + reset)
    write("mux-session", "ping-goaway", WHOLE + ping + open_tcp + goaway + data)
    write("mux-session", "two-streams", b"\x08" + open_tcp + H.mux_frame(H.MUX_OPEN, 3, H.mux_ipv4_target("10.0.0.1", 80))
          + H.mux_frame(H.MUX_DATA, 3, b"x" * 100) + fin)

    write("websocket-frames", "masked-binary", b"\x00" + WHOLE + ws_frame(2, b"adit" * 10))
    write("websocket-frames", "fragmented", b"\x00" + SPLIT + ws_frame(2, b"part1", fin=False) + ws_frame(0, b"part2"))
    write("websocket-frames", "control-close", b"\x00" + WHOLE + ws_frame(9, b"ping") + ws_frame(8, struct.pack(">H", 1000) + b"bye"))
    write("websocket-frames", "unmasked-from-server", b"\x01" + WHOLE + ws_frame(2, b"x" * 300, mask=None))
    write("websocket-frames", "compressed", b"\x00" + WHOLE + ws_frame(2, zlib.compress(b"a" * 1000)[2:-4], rsv1=True))

    def raw_deflate(data: bytes, wbits: int = 15) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, -wbits)
        return c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)

    write("deflate", "text", b"\x06" + b"\x80" + raw_deflate(b"the quick brown fox " * 50)[:-4])
    write("deflate", "split", b"\x06" + SPLIT + raw_deflate(random.Random(1).randbytes(200) + b"z" * 2000))
    write("deflate", "bomb", b"\x06" + WHOLE + raw_deflate(b"\x00" * 1_000_000))
    write("deflate", "small-window", b"\x00" + WHOLE + raw_deflate(b"abc" * 300, wbits=9))

    write("extension-offers", "browser", b"permessage-deflate; client_max_window_bits")
    write("extension-offers", "full", b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; "
                                      b"server_max_window_bits=10; client_max_window_bits=12, x-webkit-deflate-frame")
    write("extension-offers", "quoted", b'permessage-deflate; client_max_window_bits="15"\nfoo; bar="a\\"b"')

    upgrade = (b"GET /tunnel HTTP/1.1\r\nHost: gw.example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
               b"Sec-WebSocket-Protocol: adit.v1\r\nAuthorization: Bearer abc\r\n\r\n")
    write("http-request-head", "upgrade", WHOLE + upgrade + ws_frame(2, b"early"))
    write("http-request-head", "upgrade-split", SPLIT + upgrade)
    write("http-request-head", "post-chunked", WHOLE + b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    write("http-request-head", "folded", WHOLE + b"GET / HTTP/1.0\r\nX: a\r\n b\r\n\r\n")

    write("http-response", "407-basic", WHOLE + b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"corp\"\r\n"
                                                b"Content-Length: 5\r\n\r\nnope!")
    write("http-response", "407-digest-chunked", SPLIT + b"HTTP/1.1 407 Auth\r\nProxy-Authenticate: Digest realm=\"r\", nonce=\"n\", qop=\"auth\", algorithm=SHA-256\r\n"
                                                         b"Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
    write("http-response", "200", WHOLE + b"HTTP/1.1 200 Connection established\r\n\r\n")
    write("http-response", "101", WHOLE + b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                                          b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: adit.v1\r\n\r\n")

    write("proxy-challenges", "digest", b"\x00" + b'Digest realm="corp", nonce="abc", qop="auth,auth-int", algorithm=MD5-sess, opaque="o"')
    write("proxy-challenges", "several", b"\x00" + b'Negotiate\nNTLM\nBasic realm="x", charset="UTF-8"\nDigest realm="r", nonce="n", algorithm=SHA-512-256, userhash=true')
    ntlm_type2 = (b"NTLMSSP\x00" + struct.pack("<I", 2) + struct.pack("<HHI", 8, 8, 56) + struct.pack("<I", 0xE2898215)
                  + b"\x01\x23\x45\x67\x89\xab\xcd\xef" + b"\x00" * 8 + struct.pack("<HHI", 12, 12, 64) + b"\x00" * 8
                  + "CORP".encode("utf-16-le") + struct.pack("<HH", 0, 0) + b"\x00" * 8)
    write("proxy-challenges", "ntlm-type2", b"\x01" + ntlm_type2)

    write("socks5-client", "no-auth-ok", b"\x00" + WHOLE + b"\x05\x00" + b"\x05\x00\x00\x01" + socket.inet_aton("1.2.3.4") + b"\x01\xbb")
    write("socks5-client", "userpass-ipv6", b"\x02" + SPLIT + b"\x05\x02" + b"\x01\x00" + b"\x05\x00\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x00\x50")
    write("socks5-client", "domain-refused", b"\x01" + WHOLE + b"\x05\x00" + b"\x05\x05\x00\x03\x0bexample.com\x00\x50")

    write("socks-front", "socks4a", b"\x00" + b"\x04\x01\x00\x50\x00\x00\x00\x01user\x00example.com\x00")
    write("socks-front", "socks4", b"\x00" + b"\x04\x01\x01\xbb" + socket.inet_aton("10.0.0.1") + b"\x00")
    write("socks-front", "userpass", b"\x01" + b"\x01\x03app\x02pw")
    write("socks-front", "udp-domain", b"\x02" + b"\x00\x00\x00\x03\x0bexample.com\x00\x35" + b"dns query")
    write("socks-front", "udp-ipv6", b"\x02" + b"\x00\x00\x00\x04" + b"\x00" * 15 + b"\x01" + b"\x00\x35" + b"x")

    write("http-proxy-front", "connect", WHOLE + b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                                                b"Proxy-Authorization: Basic YXBwOnB3\r\n\r\n")
    write("http-proxy-front", "absolute", SPLIT + b"GET http://example.com/path?q=1 HTTP/1.1\r\nHost: example.com\r\n"
                                                  b"Proxy-Connection: keep-alive\r\n\r\n")
    write("http-proxy-front", "ipv6", WHOLE + b"CONNECT [::1]:22 HTTP/1.0\r\n\r\n")

    write("users-file", "full", b"""users:
  - name: alice
    token: sha256:0fe0b093bc14ba36d37b127a011fb3a305aa132089a2e437942c87933667fd12
    allow: ["db.internal:5432", "10.0.0.0/8:22", "10.0.0.53:53/udp"]
    allow-reverse: ["127.0.0.1:8000-8999"]
    limits: {sessions: 3, streams: 100}
  - name: bob
    certificates: [CN=bob, "DNS:bob.example"]
""")
    write("users-file", "empty-list", b"users: []\n")
    write("config-file", "both", b"server:\n  listen: 0.0.0.0:443\n  allow: [db:5432, '*.corp:443']\n"
                                 b"  keepalive-timeout: 10\nclient:\n  server: wss://gw/\n  forward:\n    - 5432:db:5432\n  insecure: false\n")
    write("config-file", "mistakes", b"server:\n  alow: [x]\n  --listen: 1\nclient:\n  L: [1:a:2]\n  insecure: maybe\n")
    write("config-file", "shapes", b"server:\nclient: {server: [a, [b]], forward: {x: 1}}\nlisten: 1\n")
    # What fuzzing found (kept as seeds so that `make test` replays them):
    write("http-request-head", "non-ascii-header-name", WHOLE + b"GET / HTTP/1.1\r\nHost: x\r\nX-\xc3\xa9: 1\r\n\r\n")
    write("http-response", "non-ascii-header-name", WHOLE + b"HTTP/1.1 407 Auth\r\nProxy-\xc3\xa9: x\r\n\r\n")
    write("http-proxy-front", "non-ascii-header-name", WHOLE + b"CONNECT a:1 HTTP/1.1\r\n\xff\xfe: 1\r\n\r\n")
    write("users-file", "broken", b"users:\n  - name: [x\n")


if __name__ == "__main__":
    main()
