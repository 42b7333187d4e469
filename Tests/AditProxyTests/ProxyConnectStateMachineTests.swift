import AditProxy
import Foundation
import NIOHTTP1
import Testing

@Suite struct ProxyConnectStateMachineTests {
    let credentials = ProxyCredentials(user: "alice", password: "s3cret")

    func response(_ status: HTTPResponseStatus, _ headers: [(String, String)] = [], version: HTTPVersion = .http1_1)
        -> HTTPResponseHead
    {
        HTTPResponseHead(version: version, status: status, headers: HTTPHeaders(headers))
    }

    func authorization(_ action: ProxyConnectStateMachine.Action) -> String? {
        switch action {
        case .send(let head), .reconnectAndSend(let head): return head.headers["Proxy-Authorization"].first
        default: return nil
        }
    }

    @Test func plainConnectSucceeds() {
        var m = ProxyConnectStateMachine(target: "gw.example:443", credentials: nil,
                                         extraHeaders: [("User-Agent", "Mozilla/5.0"), ("X-Team", "ops")])
        guard case .send(let head) = m.connectionOpened() else { Issue.record("no request"); return }
        #expect(head.method == .CONNECT)
        #expect(head.uri == "gw.example:443")
        #expect(head.headers["Host"] == ["gw.example:443"])
        #expect(head.headers["User-Agent"] == ["Mozilla/5.0"])
        #expect(head.headers["X-Team"] == ["ops"])
        #expect(head.headers["Proxy-Authorization"].isEmpty)  // never sent blind
        #expect(m.receivedResponse(response(.ok), bodyStart: "", willClose: false) == .established)
    }

    @Test func basicAfterTheChallengeThenRejection() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = m.connectionOpened()
        let challenge = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Basic realm="x""#)])
        let answer = m.receivedResponse(challenge, bodyStart: "", willClose: false)
        #expect(authorization(answer) == "Basic YWxpY2U6czNjcmV0")
        guard case .send = answer else { Issue.record("should reuse the connection"); return }
        #expect(m.receivedResponse(challenge, bodyStart: "", willClose: false)
            == .fail(.credentialsRejected(offered: ["Basic"], tried: ["Basic"])))
    }

    @Test func aProxyThatClosesAfter407GetsTheAnswerOnANewConnection() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = m.connectionOpened()
        let challenge = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Basic realm="Tinyproxy""#),
                                                                ("Connection", "close")], version: .http1_0)
        guard case .reconnectAndSend(let head) = m.receivedResponse(challenge, bodyStart: "", willClose: true) else {
            Issue.record("expected a reconnect")
            return
        }
        // The new connection starts with that answer, not with a bare CONNECT.
        #expect(m.connectionOpened() == .send(head))
        #expect(m.receivedResponse(response(.ok), bodyStart: "", willClose: false) == .established)
    }

    @Test func theStrongestSchemeWins() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = m.connectionOpened()
        let challenge = response(.proxyAuthenticationRequired, [
            ("Proxy-Authenticate", #"Basic realm="r""#),
            ("Proxy-Authenticate", #"Digest realm="r", nonce="n1", qop="auth""#),
            ("Proxy-Authenticate", #"Digest realm="r", nonce="n2", qop="auth", algorithm=SHA-256"#),
            ("Proxy-Authenticate", "NTLM"),
        ])
        #expect(authorization(m.receivedResponse(challenge, bodyStart: "", willClose: false))?.hasPrefix("NTLM TlRMTVNTUAAB") == true)
        var digestOnly = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = digestOnly.connectionOpened()
        let digests = response(.proxyAuthenticationRequired, [
            ("Proxy-Authenticate", #"Digest realm="r", nonce="n1", qop="auth", Basic realm="r""#),
            ("Proxy-Authenticate", #"Digest realm="r", nonce="n2", qop="auth", algorithm=SHA-256"#),
        ])
        let value = authorization(digestOnly.receivedResponse(digests, bodyStart: "", willClose: false)) ?? ""
        #expect(value.contains("algorithm=SHA-256") && value.contains(#"uri="h:1""#) && value.contains(#"nonce="n2""#))
    }

    @Test func ntlmRunsOnOneConnection() throws {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = m.connectionOpened()
        _ = m.receivedResponse(response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "NTLM")]),
                               bodyStart: "", willClose: false)
        var challenge = Array("NTLMSSP".utf8) + [0, 2, 0, 0, 0] + [UInt8](repeating: 0, count: 8)
        challenge += [0x05, 0x82, 0x89, 0x00] + [1, 2, 3, 4, 5, 6, 7, 8] + [UInt8](repeating: 0, count: 16)
        let type2 = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "NTLM " + Data(challenge).base64EncodedString())])
        let type3 = m.receivedResponse(type2, bodyStart: "", willClose: false)
        #expect(authorization(type3)?.hasPrefix("NTLM TlRMTVNTUAAD") == true)
        #expect(m.receivedResponse(type2, bodyStart: "", willClose: false)
            == .fail(.credentialsRejected(offered: ["NTLM"], tried: ["NTLM"])))
        // A proxy that closes after its challenge cannot do NTLM.
        var closing = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = closing.connectionOpened()
        _ = closing.receivedResponse(response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "NTLM")]),
                                     bodyStart: "", willClose: false)
        guard case .fail(.closed) = closing.receivedResponse(type2, bodyStart: "", willClose: true) else {
            Issue.record("expected a failure")
            return
        }
    }

    @Test func aStaleDigestNonceIsRetriedOnce() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials)
        _ = m.connectionOpened()
        _ = m.receivedResponse(response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Digest realm="r", nonce="a""#)]),
                               bodyStart: "", willClose: false)
        let stale = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Digest realm="r", nonce="b", stale=true"#)])
        #expect(authorization(m.receivedResponse(stale, bodyStart: "", willClose: false))?.contains(#"nonce="b""#) == true)
        let wrong = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Digest realm="r", nonce="c""#)])
        guard case .fail(.credentialsRejected) = m.receivedResponse(wrong, bodyStart: "", willClose: false) else {
            Issue.record("expected rejection")
            return
        }
    }

    @Test func failuresCarryTheProxysReason() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: nil)
        _ = m.connectionOpened()
        #expect(m.receivedResponse(response(.proxyAuthenticationRequired, [("Proxy-Authenticate", #"Basic realm="r""#)]),
                                   bodyStart: "", willClose: false) == .fail(.credentialsRequired(offered: ["Basic"])))
        #expect(m.receivedResponse(response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Bearer")]),
                                   bodyStart: "", willClose: false) == .fail(.unsupportedSchemes(offered: ["Bearer"])))
        let refused = m.receivedResponse(response(.serviceUnavailable, [("X-Squid-Error", "ERR_CONNECT_FAIL 111")]),
                                         bodyStart: "", willClose: true)
        #expect(refused == .fail(.upstreamFailed(target: "h:1", status: 503,
                                                 reason: "Service Unavailable (ERR_CONNECT_FAIL: Connection refused)")))
        #expect(m.receivedResponse(response(.forbidden, [("X-Squid-Error", "ERR_ACCESS_DENIED 0")]), bodyStart: "",
                                   willClose: false)
            == .fail(.denied(target: "h:1", status: 403, reason: "Forbidden (ERR_ACCESS_DENIED 0)")))
        #expect(m.receivedResponse(response(.badGateway, [("Content-Type", "text/plain")]), bodyStart: "no route\nmore",
                                   willClose: false)
            == .fail(.upstreamFailed(target: "h:1", status: 502, reason: "Bad Gateway (no route)")))
    }

    @Test func neverLoopsForever() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials, maxRounds: 3)
        _ = m.connectionOpened()
        var last: ProxyConnectStateMachine.Action = .established
        for i in 0..<10 {
            // A proxy that keeps sending fresh stale nonces.
            last = m.receivedResponse(response(.proxyAuthenticationRequired,
                                               [("Proxy-Authenticate", "Digest realm=\"r\", nonce=\"n\(i)\", stale=true")]),
                                      bodyStart: "", willClose: false)
            if case .fail = last { break }
        }
        #expect(last == .fail(.tooManyRounds(3)))
    }
}

struct FakeNegotiator: NegotiateTokenSource {
    var token: Data?
    func nextToken(serverToken: Data) throws -> Data {
        guard let token else { throw FakeNoTicket() }
        return token
    }
}

struct FakeNoTicket: Error, CustomStringConvertible {
    var description: String { "No Kerberos credentials available" }
}

extension ProxyConnectStateMachineTests {
    @Test func negotiateComesFirstWhenThereIsATicket() {
        var m = ProxyConnectStateMachine(target: "h:1", credentials: credentials,
                                         negotiator: FakeNegotiator(token: Data([1, 2, 3])))
        _ = m.connectionOpened()
        let challenge = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Negotiate"), ("Proxy-Authenticate", "NTLM")])
        #expect(authorization(m.receivedResponse(challenge, bodyStart: "", willClose: false)) == "Negotiate AQID")
        // Refused: the next scheme it offers, with the credentials.
        #expect(authorization(m.receivedResponse(challenge, bodyStart: "", willClose: false))?.hasPrefix("NTLM ") == true)
    }

    @Test func withoutATicketNegotiateSaysWhyAndOtherSchemesStillWork() {
        var none = ProxyConnectStateMachine(target: "h:1", credentials: nil, negotiator: FakeNegotiator(token: nil))
        _ = none.connectionOpened()
        let onlyNegotiate = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Negotiate")])
        #expect(none.receivedResponse(onlyNegotiate, bodyStart: "", willClose: false)
            == .fail(.negotiateUnavailable(offered: ["Negotiate"], why: "No Kerberos credentials available")))
        var fallback = ProxyConnectStateMachine(target: "h:1", credentials: credentials, negotiator: FakeNegotiator(token: nil))
        _ = fallback.connectionOpened()
        let both = response(.proxyAuthenticationRequired, [("Proxy-Authenticate", "Negotiate"), ("Proxy-Authenticate", #"Basic realm="r""#)])
        #expect(authorization(fallback.receivedResponse(both, bodyStart: "", willClose: false))?.hasPrefix("Basic ") == true)
    }
}

@Suite struct SOCKS5StateMachineTests {
    @Test func usernamePasswordThenConnectByName() {
        var m = SOCKS5StateMachine(destination: .name("gw.example", port: 443),
                                   credentials: ProxyCredentials(user: "alice", password: "pw"))
        #expect(m.start() == .send([5, 2, 0, 2]))
        #expect(m.receive([5]) == .wait)
        #expect(m.receive([2]) == .send([1, 5] + Array("alice".utf8) + [2] + Array("pw".utf8)))
        #expect(m.receive([1, 0]) == .send([5, 1, 0, 3, 10] + Array("gw.example".utf8) + [1, 187]))
        #expect(m.receive([5, 0, 0, 1, 0, 0]) == .wait)
        #expect(m.receive([0, 0, 0, 0, 42]) == .established(leftover: [42]))
    }

    @Test func failures() {
        var noAuth = SOCKS5StateMachine(destination: .ipv4([127, 0, 0, 1], port: 80), credentials: nil)
        #expect(noAuth.start() == .send([5, 1, 0]))
        #expect(noAuth.receive([5, 0xFF]) == .fail(.credentialsRequired))
        var wrong = SOCKS5StateMachine(destination: .ipv4([127, 0, 0, 1], port: 80),
                                       credentials: ProxyCredentials(user: "a", password: "b"))
        _ = wrong.start()
        _ = wrong.receive([5, 2])
        #expect(wrong.receive([1, 1]) == .fail(.credentialsRejected))
        var refused = SOCKS5StateMachine(destination: .ipv6([UInt8](repeating: 0, count: 15) + [1], port: 80), credentials: nil)
        _ = refused.start()
        #expect(refused.receive([5, 0]) == .send([5, 1, 0, 4] + [UInt8](repeating: 0, count: 15) + [1, 0, 80]))
        #expect(refused.receive([5, 5, 0, 1, 0, 0, 0, 0, 0, 0]) == .fail(.connectFailed(5)))
        #expect(SOCKS5Error.connectFailed(5).description.contains("connection refused"))
        var http = SOCKS5StateMachine(destination: .name("x", port: 1), credentials: nil)
        _ = http.start()
        #expect(http.receive(Array("HTTP/1.1 400".utf8)) == .fail(.notSOCKS5))
    }
}

@Suite struct ProxySelectionTests {
    @Test func proxyURLs() throws {
        let a = try ProxyURL.parse("http://alice:p%40ss@proxy.corp:3128")
        #expect(a.kind == .http && a.host == "proxy.corp" && a.port == 3128 && a.user == "alice" && a.password == "p@ss")
        #expect(a.description == "http://alice@proxy.corp:3128")  // never the password
        #expect(try ProxyURL.parse("proxy.corp").port == 1080)
        #expect(try ProxyURL.parse("https://proxy.corp").port == 443)
        #expect(try ProxyURL.parse("socks5h://[::1]:1080/").host == "::1")
        for bad in ["ftp://x:1", "http://:8080", "http://x:99999", "http://x:1/path", "http://[::1:80"] {
            #expect(throws: ProxyConfigurationError.self, "\(bad)") { _ = try ProxyURL.parse(bad) }
        }
    }

    @Test func environmentAsCurlReadsIt() throws {
        func pick(_ env: [String: String], host: String = "gw.corp.example", port: Int = 80, secure: Bool = false)
            throws -> ProxySelection
        {
            try ProxySelection.choose(explicit: nil, disabled: false, serverHost: host, serverPort: port, secure: secure,
                                      environment: env)
        }
        #expect(try pick([:]).proxy == nil)
        #expect(try pick(["http_proxy": "http://p:1"]).reason == "from http_proxy")
        #expect(try pick(["http_proxy": "http://p:1", "HTTP_PROXY": "http://q:1"]).proxy?.host == "p")
        #expect(try pick(["https_proxy": "http://p:1"]).proxy == nil)  // ws:// does not use it
        #expect(try pick(["https_proxy": "http://p:1"], secure: true).proxy?.host == "p")
        #expect(try pick(["ALL_PROXY": "socks5h://s:1"]).proxy?.kind == .socks5h)
        let base = ["http_proxy": "http://p:1"]
        for (noProxy, direct) in [("corp.example", true), (".corp.example", true), ("*.corp.example", true),
                                  ("example", true), ("orp.example", false), ("*", true), ("gw.corp.example:80", true),
                                  ("gw.corp.example:443", false), ("other.com, gw.corp.example", true)] {
            var env = base
            env["NO_PROXY"] = noProxy
            #expect(try (pick(env).proxy == nil) == direct, "NO_PROXY=\(noProxy)")
        }
        for (noProxy, host, direct) in [("10.0.0.0/8", "10.1.2.3", true), ("10.0.0.0/8", "11.0.0.1", false),
                                        ("192.168.1.7", "192.168.1.7", true), ("fd00::/8", "fd12::1", true),
                                        ("[::1]:80", "::1", true), ("127.0.0.1", "localhost", false)] {
            var env = base
            env["no_proxy"] = noProxy
            #expect(try (pick(env, host: host).proxy == nil) == direct, "no_proxy=\(noProxy) host \(host)")
        }
        #expect(try ProxySelection.choose(explicit: nil, disabled: true, serverHost: "h", serverPort: 1, secure: false,
                                          environment: base).proxy == nil)
        #expect(throws: ProxyConfigurationError.self) { _ = try pick(["http_proxy": "gopher://p"]) }
    }
}
