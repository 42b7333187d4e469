import AditGateway
import AditMux
import AditTransport
import Logging
import NIOCore
import NIOEmbedded
import Testing

/// A tunnel in one process: two sessions back to back on an embedded loop. The server side accepts every
/// stream onto a fresh embedded "target" channel the test drives, or refuses it as `refuse` says.
final class InProcessTunnel: StreamOpener, MuxSessionDelegate {
    let loop = EmbeddedEventLoop()
    let clientChannel: EmbeddedChannel
    let serverChannel: EmbeddedChannel
    let client: MuxHandler
    let server: MuxHandler
    var targets: [(MuxOpenRequest, EmbeddedChannel)] = []
    var refuse: ((MuxOpenRequest) -> ResetCode?)?

    init() throws {
        let logger = Logger(label: "test")
        var serverConfiguration = MuxConfiguration()
        serverConfiguration.features = [.datagrams, .reverse]
        client = MuxHandler(role: .client, logger: logger)
        server = MuxHandler(role: .server, configuration: serverConfiguration, logger: logger)
        clientChannel = EmbeddedChannel(handler: client, loop: loop)
        serverChannel = EmbeddedChannel(handler: server, loop: loop)
        server.delegate = self
        try clientChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try serverChannel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        try pump()
    }

    var eventLoop: any EventLoop { loop }

    func openStream(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>) {
        client.openStream(request, endpoint: endpoint, promise: promise)
    }

    func pump() throws {
        for _ in 0..<1000 {
            loop.run()
            var moved = false
            while let message = try clientChannel.readOutbound(as: TunnelMessage.self) {
                try serverChannel.writeInbound(message.joined())
                moved = true
            }
            while let message = try serverChannel.readOutbound(as: TunnelMessage.self) {
                try clientChannel.writeInbound(message.joined())
                moved = true
            }
            if !moved { return }
        }
    }

    func muxSessionDidBecomeReady(_ session: MuxHandler) {}
    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest) {
        if let code = refuse?(request) {
            session.reject(stream, code: code, reason: "\(request.target) \(code.summary)")
            return
        }
        let target = EmbeddedChannel(loop: loop)
        _ = try? target.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3)).wait()
        targets.append((request, target))
        session.accept(stream, endpoint: ChannelStreamEndpoint(target))
    }
    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {}
    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {}

    /// A local connection, as a listener would accept it.
    func localConnection() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 4)).wait()
        return channel
    }
}

extension EmbeddedChannel {
    func outboundText() throws -> String {
        var out = ""
        while let b = try readOutbound(as: ByteBuffer.self) { out += String(buffer: b) }
        return out
    }
}

@Suite struct HTTPProxyFrontTests {
    let logger = Logger(label: "test")

    @Test func absoluteFormRequestsShareOneKeptAliveClientConnection() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        HTTPProxyFront.serve(local, opener: tunnel, credentials: nil, logger: logger)

        try local.writeInbound(ByteBuffer(string: "GET http://intranet:8080/a?b HTTP/1.1\r\nHost: intranet:8080\r\nProxy-Connection: keep-alive\r\n\r\n"))
        try tunnel.pump()
        let (firstRequest, firstTarget) = try #require(tunnel.targets.first)
        #expect(firstRequest.target == MuxTarget(host: .name("intranet"), port: 8080))
        #expect(try firstTarget.outboundText() == "GET /a?b HTTP/1.1\r\nHost: intranet:8080\r\nConnection: close\r\n\r\n")
        try firstTarget.writeInbound(ByteBuffer(string: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"))
        try tunnel.pump()
        #expect(try local.outboundText() == "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello")
        #expect(local.isActive)

        // The next request on the same connection, to another host, with a chunked answer.
        try local.writeInbound(ByteBuffer(string: "POST http://other/x HTTP/1.1\r\nContent-Length: 4\r\n\r\nbody"))
        try tunnel.pump()
        #expect(tunnel.targets.count == 2)
        let secondTarget = tunnel.targets[1].1
        #expect(try secondTarget.outboundText() == "POST /x HTTP/1.1\r\nHost: other\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbody")
        try secondTarget.writeInbound(ByteBuffer(string: "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"))
        try tunnel.pump()
        #expect(try local.outboundText()
            == "HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        #expect(local.isActive)
    }

    @Test func anAnswerFramedByTheConnectionClosesTheClientConnectionAfterIt() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        HTTPProxyFront.serve(local, opener: tunnel, credentials: nil, logger: logger)
        try local.writeInbound(ByteBuffer(string: "GET http://h/ HTTP/1.1\r\n\r\n"))
        try tunnel.pump()
        let target = try #require(tunnel.targets.first?.1)
        try target.writeInbound(ByteBuffer(string: "HTTP/1.0 200 OK\r\n\r\nuntil the end"))
        target.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try tunnel.pump()
        #expect(try local.outboundText() == "HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nuntil the end")
        #expect(!local.isActive)
    }

    @Test func aPipelinedSecondRequestWaitsForTheFirstAnswer() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        HTTPProxyFront.serve(local, opener: tunnel, credentials: nil, logger: logger)
        try local.writeInbound(ByteBuffer(string: "GET http://a/1 HTTP/1.1\r\n\r\nGET http://b/2 HTTP/1.1\r\n\r\n"))
        try tunnel.pump()
        #expect(tunnel.targets.count == 1)  // one exchange at a time
        try tunnel.targets[0].1.writeInbound(ByteBuffer(string: "HTTP/1.1 204 No Content\r\n\r\n"))
        try tunnel.pump()
        #expect(tunnel.targets.count == 2)
        #expect(tunnel.targets[1].0.target == MuxTarget(host: .name("b"), port: 80))
    }

    @Test(arguments: [(ResetCode.notAllowed, "403"), (.refused, "502"), (.unreachable, "502"), (.timedOut, "504")])
    func aRefusedStreamIsAnsweredInHTTPTerms(code: ResetCode, status: String) throws {
        let tunnel = try InProcessTunnel()
        tunnel.refuse = { _ in code }
        for request in ["GET http://h/ HTTP/1.1\r\n\r\n", "CONNECT h:443 HTTP/1.1\r\n\r\n"] {
            let local = try tunnel.localConnection()
            HTTPProxyFront.serve(local, opener: tunnel, credentials: nil, logger: logger)
            try local.writeInbound(ByteBuffer(string: request))
            try tunnel.pump()
            let answer = try local.outboundText()
            #expect(answer.hasPrefix("HTTP/1.1 \(status) "), "\(request): \(answer)")
            #expect(answer.contains(code.summary))  // the reason, for the user
            #expect(!local.isActive)
        }
    }

    @Test func connectAnswers200ThenCarriesBytesBothWays() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        HTTPProxyFront.serve(local, opener: tunnel, credentials: nil, logger: logger)
        try local.writeInbound(ByteBuffer(string: "CONNECT db.internal:5432 HTTP/1.1\r\nHost: db.internal:5432\r\n\r\n"))
        try tunnel.pump()
        #expect(try local.outboundText() == "HTTP/1.1 200 Connection established\r\n\r\n")
        let target = try #require(tunnel.targets.first?.1)
        try local.writeInbound(ByteBuffer(string: "raw bytes"))
        try tunnel.pump()
        #expect(try target.outboundText() == "raw bytes")
        try target.writeInbound(ByteBuffer(string: "answer"))
        try tunnel.pump()
        #expect(try local.outboundText() == "answer")
    }

    @Test func localCredentialsAreRequired() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        HTTPProxyFront.serve(local, opener: tunnel, credentials: LocalCredentials(user: "app", password: "pw"), logger: logger)
        try local.writeInbound(ByteBuffer(string: "CONNECT h:443 HTTP/1.1\r\n\r\n"))
        try tunnel.pump()
        let answer = try local.outboundText()
        #expect(answer.hasPrefix("HTTP/1.1 407 "))
        #expect(answer.contains("Proxy-Authenticate: Basic"))
        #expect(tunnel.targets.isEmpty)  // nothing was opened
    }
}

@Suite struct SOCKSFrontTests {
    let logger = Logger(label: "test")

    @Test func socks5ConnectByNameRepliesSuccessThenRelays() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        SOCKSFront.serve(local, opener: tunnel, credentials: nil, udpIdleTimeout: .seconds(60), logger: logger)
        try local.writeInbound(ByteBuffer(bytes: [5, 1, 0]))
        #expect(Array(try local.readOutbound(as: ByteBuffer.self)?.readableBytesView ?? []) == [5, 0])
        let name = Array("intranet.example".utf8)
        try local.writeInbound(ByteBuffer(bytes: [5, 1, 0, 3, UInt8(name.count)] + name + [0x01, 0xBB]))
        try tunnel.pump()
        #expect(tunnel.targets.first?.0.target == MuxTarget(host: .name("intranet.example"), port: 443))
        let reply = Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView)
        #expect(reply.prefix(2) == [5, 0])
        try local.writeInbound(ByteBuffer(string: "hello"))
        try tunnel.pump()
        #expect(try tunnel.targets[0].1.outboundText() == "hello")
    }

    @Test(arguments: [(ResetCode.notAllowed, UInt8(0x02)), (.refused, 0x05), (.unreachable, 0x04), (.timedOut, 0x06)])
    func socks5ReplyCodesFollowTheOutcome(code: ResetCode, reply: UInt8) throws {
        let tunnel = try InProcessTunnel()
        tunnel.refuse = { _ in code }
        let local = try tunnel.localConnection()
        SOCKSFront.serve(local, opener: tunnel, credentials: nil, udpIdleTimeout: .seconds(60), logger: logger)
        try local.writeInbound(ByteBuffer(bytes: [5, 1, 0]))
        _ = try local.readOutbound(as: ByteBuffer.self)
        try local.writeInbound(ByteBuffer(bytes: [5, 1, 0, 1, 10, 0, 0, 1, 0, 22]))
        try tunnel.pump()
        let answer = Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView)
        #expect(answer.prefix(2) == [5, reply])
        #expect(!local.isActive)
    }

    @Test func usernameAndPasswordAreChecked() throws {
        let tunnel = try InProcessTunnel()
        for (password, ok) in [("pw", true), ("nope", false)] {
            let local = try tunnel.localConnection()
            SOCKSFront.serve(local, opener: tunnel, credentials: LocalCredentials(user: "app", password: "pw"),
                             udpIdleTimeout: .seconds(60), logger: logger)
            try local.writeInbound(ByteBuffer(bytes: [5, 2, 0, 2]))
            #expect(Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView) == [5, 2])
            try local.writeInbound(ByteBuffer(bytes: [1, 3] + Array("app".utf8) + [UInt8(password.utf8.count)] + Array(password.utf8)))
            #expect(Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView) == [1, ok ? 0 : 1])
            tunnel.loop.run()
            #expect(local.isActive == ok)
        }
    }

    @Test func aClientWithoutTheRequiredMethodIsTurnedAway() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        SOCKSFront.serve(local, opener: tunnel, credentials: LocalCredentials(user: "a", password: "b"),
                         udpIdleTimeout: .seconds(60), logger: logger)
        try local.writeInbound(ByteBuffer(bytes: [5, 1, 0]))
        #expect(Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView) == [5, 0xFF])
        tunnel.loop.run()
        #expect(!local.isActive)
    }

    @Test func socks4aConnects() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        SOCKSFront.serve(local, opener: tunnel, credentials: nil, udpIdleTimeout: .seconds(60), logger: logger)
        try local.writeInbound(ByteBuffer(bytes: [4, 1, 0, 80, 0, 0, 0, 1, 0] + Array("web".utf8) + [0] + Array("early".utf8)))
        try tunnel.pump()
        #expect(tunnel.targets.first?.0.target == MuxTarget(host: .name("web"), port: 80))
        #expect(Array(try #require(try local.readOutbound(as: ByteBuffer.self)).readableBytesView) == [0, 90, 0, 0, 0, 0, 0, 0])
        try tunnel.pump()
        #expect(try tunnel.targets[0].1.outboundText() == "early")  // bytes sent right behind the request
    }

    @Test func garbageIsNotSOCKS() throws {
        let tunnel = try InProcessTunnel()
        let local = try tunnel.localConnection()
        SOCKSFront.serve(local, opener: tunnel, credentials: nil, udpIdleTimeout: .seconds(60), logger: logger)
        try local.writeInbound(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"))
        tunnel.loop.run()
        #expect(!local.isActive)
        #expect(tunnel.targets.isEmpty)
    }
}

@Suite struct ClientLibraryTests {
    /// A wss:// client whose TLS material cannot be loaded must not start (it once fell back to plain text).
    @Test func aTLSSetUpFailureStopsTheClientInsteadOfDiallingInPlainText() throws {
        var configuration = AditClient.Configuration(url: try TunnelURL.parse("wss://gateway.example/"),
                                                     forwards: [try ForwardSpec.parse("0:h:1")])
        configuration.tls.caFile = "/nonexistent/ca.pem"
        #expect(throws: ConfigurationError.self) {
            _ = try AditClient(configuration: configuration, logger: Logger(label: "test"))
        }
    }
}
