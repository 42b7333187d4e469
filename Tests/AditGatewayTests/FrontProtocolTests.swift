import AditGateway
import AditMux
import AditTransport
import NIOCore
import NIOHTTP1
import NIOSOCKS
import Testing

@Suite struct SOCKSFrontProtocolTests {
    @Test func methodSelectionFollowsWhetherCredentialsAreRequired() {
        #expect(SOCKSFrontProtocol.selectMethod(offered: [.noneRequired], credentialsRequired: false) == .noneRequired)
        #expect(SOCKSFrontProtocol.selectMethod(offered: [.noneRequired, .usernamePassword], credentialsRequired: true)
            == .usernamePassword)
        #expect(SOCKSFrontProtocol.selectMethod(offered: [.noneRequired], credentialsRequired: true) == .noneAcceptable)
        #expect(SOCKSFrontProtocol.selectMethod(offered: [.gssapi], credentialsRequired: false) == .noneAcceptable)
    }

    @Test func usernamePasswordIsParsedAcrossReads() throws {
        let whole: [UInt8] = [1, 5] + Array("alice".utf8) + [6] + Array("s3cret".utf8)
        for cut in 0...whole.count {
            var buffer = ByteBuffer(bytes: whole[..<cut])
            if cut < whole.count {
                #expect(try SOCKSFrontProtocol.parseUsernamePassword(&buffer) == nil)
                buffer.writeBytes(whole[cut...])
            }
            let parsed = try #require(try SOCKSFrontProtocol.parseUsernamePassword(&buffer))
            #expect(parsed.user == "alice" && parsed.password == "s3cret")
            #expect(buffer.readableBytes == 0)
        }
        var wrongVersion = ByteBuffer(bytes: [5, 1, 0x61, 1, 0x62])
        #expect(throws: SOCKSFrontProtocol.Violation.self) { _ = try SOCKSFrontProtocol.parseUsernamePassword(&wrongVersion) }
    }

    @Test func socks4AndSocks4aRequests() throws {
        var v4 = ByteBuffer(bytes: [4, 1, 0x00, 0x50, 10, 0, 0, 7] + Array("bob".utf8) + [0] + Array("rest".utf8))
        let request = try #require(try SOCKSFrontProtocol.parseSOCKS4(&v4))
        #expect(request == .init(command: 1, target: MuxTarget(hostText: "10.0.0.7", port: 80), userID: "bob"))
        #expect(v4.readableBytesView.elementsEqual("rest".utf8))  // what follows is early data

        let name = Array("Intranet.Example".utf8)
        let whole: [UInt8] = [4, 1, 0x01, 0xBB, 0, 0, 0, 1, 0] + name + [0]
        for cut in 0..<whole.count {
            var partial = ByteBuffer(bytes: whole[..<cut])
            #expect(try SOCKSFrontProtocol.parseSOCKS4(&partial) == nil, "cut at \(cut)")
        }
        var v4a = ByteBuffer(bytes: whole)
        // Names go to the server as names (lower-cased), so its policy sees them.
        #expect(try SOCKSFrontProtocol.parseSOCKS4(&v4a)?.target == MuxTarget(host: .name("intranet.example"), port: 443))
        var zeroPort = ByteBuffer(bytes: [4, 1, 0, 0, 10, 0, 0, 7, 0])
        #expect(throws: SOCKSFrontProtocol.Violation.self) { _ = try SOCKSFrontProtocol.parseSOCKS4(&zeroPort) }
    }

    @Test func replyCodesFollowTheStreamsOutcome() {
        func reply(_ code: ResetCode) -> SOCKSServerReply {
            SOCKSFrontProtocol.reply(for: StreamOpenFailure(MuxStreamOpenError.reset(code, reason: "")))
        }
        #expect(reply(.notAllowed) == .notAllowed)          // 0x02
        #expect(reply(.refused) == .refused)                // 0x05
        #expect(reply(.unreachable) == .hostUnreachable)    // 0x04
        #expect(reply(.timedOut) == .ttlExpired)            // 0x06
        #expect(SOCKSFrontProtocol.reply(for: StreamOpenFailure(TunnelUnavailableError(reason: "down"))) == .serverFailure)
    }

    @Test func udpHeadersRoundTripAndFragmentsAreDropped() throws {
        let source = MuxTarget(hostText: "10.0.0.53", port: 53)
        let framed = SOCKSFrontProtocol.udpReplyHeader(from: source, allocator: ByteBufferAllocator(),
                                                      payload: ByteBuffer(string: "answer"))
        let (target, payload) = try #require(SOCKSFrontProtocol.parseUDPRequest(framed))
        #expect(target == source)
        #expect(String(buffer: payload) == "answer")
        let named = ByteBuffer(bytes: [0, 0, 0, 3, 4] + Array("host".utf8) + [0, 53] + Array("q".utf8))
        #expect(SOCKSFrontProtocol.parseUDPRequest(named)?.target == MuxTarget(host: .name("host"), port: 53))
        let fragment = ByteBuffer(bytes: [0, 0, 1, 1, 10, 0, 0, 1, 0, 53, 0x71])
        #expect(SOCKSFrontProtocol.parseUDPRequest(fragment) == nil)
        #expect(SOCKSFrontProtocol.parseUDPRequest(ByteBuffer(bytes: [0, 0, 0, 1, 10])) == nil)
    }
}

@Suite struct HTTPProxyRequestTests {
    func head(_ method: HTTPMethod, _ uri: String, _ headers: [(String, String)] = [], minor: Int = 1) -> HTTPRequestHead {
        HTTPRequestHead(version: .init(major: 1, minor: minor), method: method, uri: uri, headers: HTTPHeaders(headers))
    }

    @Test func connectNamesItsTarget() {
        #expect(HTTPProxyRequest.decide(head(.CONNECT, "example.com:443"), credentials: nil)
            == .connect(MuxTarget(host: .name("example.com"), port: 443)))
        #expect(HTTPProxyRequest.decide(head(.CONNECT, "[2001:db8::1]:8443"), credentials: nil)
            == .connect(MuxTarget(hostText: "2001:db8::1", port: 8443)))
        guard case .reject(.badRequest, _, _) = HTTPProxyRequest.decide(head(.CONNECT, "example.com"), credentials: nil) else {
            Issue.record("a CONNECT without a port must be refused")
            return
        }
    }

    @Test func anAbsoluteFormRequestIsRewrittenToOriginForm() throws {
        let request = head(.GET, "http://Intranet:8080/a/b?c=d#frag", [
            ("Host", "elsewhere.example"), ("Proxy-Connection", "keep-alive"), ("Proxy-Authorization", "Basic eA=="),
            ("Connection", "keep-alive, X-Private"), ("X-Private", "1"), ("Accept", "*/*"),
        ])
        guard case .forward(let forward) = HTTPProxyRequest.decide(request, credentials: nil) else {
            Issue.record("expected a forward")
            return
        }
        #expect(forward.target == MuxTarget(host: .name("intranet"), port: 8080))
        // The Host is the URL's (RFC 9112 §3.2.2), not what the client sent.
        #expect(forward.head == "GET /a/b?c=d HTTP/1.1\r\nHost: Intranet:8080\r\nAccept: */*\r\nConnection: close\r\n\r\n")
        #expect(forward.clientKeepAlive)
        #expect(forward.bodyFraming == HTTPBodyFramer.Framing.none)
    }

    @Test func theHostHeaderIsAddedWhenMissingAndThePortDefaultsTo80() throws {
        guard case .forward(let forward) = HTTPProxyRequest.decide(head(.POST, "http://h", [("Content-Length", "5")], minor: 0),
                                                                   credentials: nil)
        else { Issue.record("expected a forward"); return }
        #expect(forward.target.port == 80)
        #expect(forward.head.contains("POST / HTTP/1.0\r\n"))
        #expect(forward.head.contains("Host: h\r\n"))
        #expect(forward.bodyFraming == .length(5))
        #expect(!forward.clientKeepAlive)  // HTTP/1.0 without keep-alive
    }

    @Test func localCredentialsAreAskedForWith407() {
        let credentials = LocalCredentials(user: "app", password: "pw")
        guard case .reject(.proxyAuthenticationRequired, _, askForCredentials: true) =
            HTTPProxyRequest.decide(head(.CONNECT, "h:1"), credentials: credentials)
        else { Issue.record("expected 407"); return }
        let wrong = head(.CONNECT, "h:1", [("Proxy-Authorization", "Basic YXBwOndyb25n")])  // app:wrong
        guard case .reject(.proxyAuthenticationRequired, _, _) = HTTPProxyRequest.decide(wrong, credentials: credentials) else {
            Issue.record("a wrong password must get 407"); return
        }
        let right = head(.CONNECT, "h:1", [("Proxy-Authorization", "Basic YXBwOnB3")])  // app:pw
        #expect(HTTPProxyRequest.decide(right, credentials: credentials) == .connect(MuxTarget(host: .name("h"), port: 1)))
        let response = HTTPProxyRequest.errorResponse(.proxyAuthenticationRequired, "x", askForCredentials: true)
        #expect(response.hasPrefix("HTTP/1.1 407 Proxy Authentication Required\r\n"))
        #expect(response.contains("Proxy-Authenticate: Basic realm=\"adit\""))
        #expect(!response.contains("WWW-Authenticate"))
    }

    @Test func requestsThatAreNotForAProxyAreRefusedWithAHint() {
        for uri in ["/index.html", "https://example.com/", "http://user@host/"] {
            guard case .reject(.badRequest, let why, _) = HTTPProxyRequest.decide(head(.GET, uri), credentials: nil) else {
                Issue.record("\(uri) should be refused"); continue
            }
            #expect(!why.isEmpty)
        }
        let smuggling = head(.POST, "http://h/", [("Content-Length", "5"), ("Content-Length", "6")])
        guard case .reject(.badRequest, _, _) = HTTPProxyRequest.decide(smuggling, credentials: nil) else {
            Issue.record("conflicting Content-Length must be refused"); return
        }
    }

    @Test func statusesFollowTheStreamsOutcome() {
        func status(_ code: ResetCode) -> HTTPResponseStatus {
            HTTPProxyRequest.status(for: StreamOpenFailure(MuxStreamOpenError.reset(code, reason: "")))
        }
        #expect(status(.notAllowed) == .forbidden)
        #expect(status(.refused) == .badGateway)
        #expect(status(.unreachable) == .badGateway)
        #expect(status(.timedOut) == .gatewayTimeout)
        #expect(HTTPProxyRequest.status(for: StreamOpenFailure(TunnelUnavailableError(reason: "down"))) == .serviceUnavailable)
    }

    @Test func responseHeadsLoseHopByHopHeadersAndSayWhetherTheConnectionStays() {
        let head = HTTPResponseHead(version: .http1_1, status: .ok,
                                    headers: ["Content-Length": "3", "Connection": "close, X-Hop", "X-Hop": "1", "Keep-Alive": "timeout=5"])
        #expect(HTTPProxyRequest.clientResponseHead(head, keepAlive: true)
            == "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\n")
        #expect(HTTPProxyRequest.clientResponseHead(head, keepAlive: false).hasSuffix("Connection: close\r\n\r\n"))
    }
}

@Suite struct HTTPBodyFramerTests {
    @Test func contentLengthCountsExactlyAndLeavesTheRest() throws {
        var framer = HTTPBodyFramer(.length(5))
        #expect(try framer.scan(ByteBuffer(string: "abc")) == 3)
        #expect(!framer.finished)
        #expect(try framer.scan(ByteBuffer(string: "deGET /")) == 2)
        #expect(framer.finished)
    }

    @Test func chunkedBodiesEndAfterTheLastChunkAndTrailersAtEveryByteBoundary() throws {
        let body = "4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n"
        let next = "HTTP/1.1 200 OK\r\n"
        let bytes = Array((body + next).utf8)
        for cut in 0...bytes.count {
            var framer = HTTPBodyFramer(.chunked)
            let first = try framer.scan(ByteBuffer(bytes: bytes[..<cut]))
            let second = framer.finished ? 0 : try framer.scan(ByteBuffer(bytes: bytes[(first)...]))
            #expect(framer.finished, "cut at \(cut)")
            #expect(first + second == body.utf8.count, "cut at \(cut)")
        }
    }

    @Test func malformedChunksAreErrors() {
        var bad = HTTPBodyFramer(.chunked)
        #expect(throws: HTTPResponseParseError.self) { _ = try bad.scan(ByteBuffer(string: "zz\r\n")) }
        var missingCRLF = HTTPBodyFramer(.chunked)
        #expect(throws: HTTPResponseParseError.self) { _ = try missingCRLF.scan(ByteBuffer(string: "1\r\nab")) }
    }

    @Test func responseFramingFollowsRFC9112() throws {
        func framing(_ status: HTTPResponseStatus, _ headers: HTTPHeaders, _ method: HTTPMethod = .GET) throws -> HTTPBodyFramer.Framing {
            try HTTPBodyFramer.framing(of: HTTPResponseHead(version: .http1_1, status: status, headers: headers), requestMethod: method)
        }
        #expect(try framing(.ok, ["Content-Length": "10"], .HEAD) == HTTPBodyFramer.Framing.none)
        #expect(try framing(.noContent, [:]) == HTTPBodyFramer.Framing.none)
        #expect(try framing(.notModified, ["Content-Length": "10"]) == HTTPBodyFramer.Framing.none)
        #expect(try framing(.ok, ["Transfer-Encoding": "gzip, chunked", "Content-Length": "3"]) == .chunked)
        #expect(try framing(.ok, ["Content-Length": "3"]) == .length(3))
        #expect(try framing(.ok, [:]) == .untilClose)
        #expect(throws: HTTPResponseParseError.self) { _ = try framing(.ok, ["Content-Length": "-1"]) }
    }
}

@Suite struct FrontSpecTests {
    @Test func udpForwardsAndReverseForwards() throws {
        let udp = try ForwardSpec.parse("5353:10.0.0.53:53/udp")
        #expect(udp.kind == .datagram && udp.target == MuxTarget(hostText: "10.0.0.53", port: 53))
        #expect(try ForwardSpec.parse("[::1]:8080:[2001:db8::1]:443/tcp").kind == .stream)
        #expect(throws: ConfigurationError.self) { _ = try ForwardSpec.parse("5353:h:53/sctp") }

        let reverse = try ReverseForwardSpec.parse("8080:localhost:3000")
        #expect(reverse.bind == HostPort(host: "127.0.0.1", port: 8080))  // the server's loopback, as ssh -R
        #expect(reverse.target == MuxTarget(host: .name("localhost"), port: 3000))
        #expect(try ReverseForwardSpec.parse("0.0.0.0:0:127.0.0.1:53/udp").kind == .datagram)
        #expect(try ReverseForwardSpec.parse("*:9000:h:1").bind.host == "0.0.0.0")
        for bad in ["8080", "8080:h", "name.example:8080:h:1", "8080:h:0", "70000:h:1"] {
            #expect(throws: ConfigurationError.self, "\(bad)") { _ = try ReverseForwardSpec.parse(bad) }
        }
        #expect(try HostPort.parseListener("1080", what: "-D") == HostPort(host: "127.0.0.1", port: 1080))
        #expect(try HostPort.parseListener("[::1]:1080", what: "-D") == HostPort(host: "::1", port: 1080))
        #expect(throws: ConfigurationError.self) { _ = try HostPort.parseListener("a:b:c", what: "-D") }
    }

    @Test func udpPatternsNeverAllowTCPAndTheOtherWayRound() throws {
        let policy = try TargetPolicy.parse(["10.0.0.53:53/udp", "10.0.0.1:22"])
        #expect(policy.allows(MuxTarget(hostText: "10.0.0.53", port: 53), kind: .datagram))
        #expect(!policy.allows(MuxTarget(hostText: "10.0.0.53", port: 53), kind: .stream))
        #expect(policy.allows(MuxTarget(hostText: "10.0.0.1", port: 22), kind: .stream))
        #expect(!policy.allows(MuxTarget(hostText: "10.0.0.1", port: 22), kind: .datagram))
        let all = try TargetPolicy.parse(["*:*"])
        #expect(!all.allows(MuxTarget(hostText: "10.0.0.53", port: 53), kind: .datagram))
        // A comma list is several patterns, as users write them.
        let list = try TargetPolicy.parse(["a:22,b:80"])
        #expect(list.patterns.count == 2)
        #expect(list.allows(MuxTarget(host: .name("b"), port: 80)))
    }

    @Test func localCredentialsCompareInFull() {
        let credentials = LocalCredentials(user: "app", password: "secret")
        #expect(credentials.matches(user: "app", password: "secret"))
        #expect(!credentials.matches(user: "app", password: "secre"))
        #expect(!credentials.matches(user: "app", password: "secret!"))
        #expect(!credentials.matches(user: "ap", password: "secret"))
        #expect(!credentials.matches(user: "", password: ""))
    }
}
