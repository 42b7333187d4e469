import AditProxy
import NIOCore
import NIOEmbedded
import Testing

/// Records what reaches the pipeline after the proxy handler, once it has stepped aside.
final class AfterProxy: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    var received = ByteBuffer()
    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        received.writeBuffer(&bytes)
    }
}

@Suite struct ProxyConnectHandlerTests {
    func setUp(credentials: ProxyCredentials? = ProxyCredentials(user: "alice", password: "s3cret"))
        throws -> (EmbeddedChannel, EventLoopFuture<ProxyConnectHandler.Outcome>, AfterProxy)
    {
        let channel = EmbeddedChannel()
        let done = channel.eventLoop.makePromise(of: ProxyConnectHandler.Outcome.self)
        let after = AfterProxy()
        let handler = ProxyConnectHandler(
            machine: ProxyConnectStateMachine(target: "gw.example:443", credentials: credentials),
            timeout: .seconds(10), done: done) { channel in
                try channel.pipeline.syncOperations.addHandler(after)
            }
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3128)).wait()
        return (channel, done.futureResult, after)
    }

    func sent(_ channel: EmbeddedChannel) throws -> String {
        var text = ""
        while var b = try channel.readOutbound(as: ByteBuffer.self) { text += b.readString(length: b.readableBytes) ?? "" }
        return text
    }

    /// A 407 with a chunked body, answered on the same connection; the 200 comes with the target's first
    /// bytes, which must reach what is installed after the proxy handler.
    @Test func chunked407ThenEstablishedWithTrailingBytes() throws {
        let (channel, done, after) = try setUp()
        let first = try sent(channel)
        #expect(first.hasPrefix("CONNECT gw.example:443 HTTP/1.1\r\n"))
        #expect(!first.contains("Proxy-Authorization"))
        try channel.writeInbound(ByteBuffer(string:
            "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"r\"\r\n"
                + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: y\r\n\r\n"))
        let second = try sent(channel)
        #expect(second.contains("Proxy-Authorization: Basic YWxpY2U6czNjcmV0\r\n"))
        // The answer split at an odd place, and the target's first bytes in the same segment.
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.1 200 Connection est"))
        try channel.writeInbound(ByteBuffer(string: "ablished\r\n\r\nSSH-2.0-OpenSSH\r\n"))
        guard case .established = try done.wait() else { Issue.record("not established"); return }
        #expect(after.received == ByteBuffer(string: "SSH-2.0-OpenSSH\r\n"))
        // The proxy handler left the pipeline: later bytes go straight through.
        try channel.writeInbound(ByteBuffer(string: "more"))
        #expect(after.received == ByteBuffer(string: "SSH-2.0-OpenSSH\r\nmore"))
    }

    @Test func a407ThatClosesAsksForANewConnection() throws {
        let (channel, done, _) = try setUp()
        _ = try sent(channel)
        try channel.writeInbound(ByteBuffer(string:
            "HTTP/1.0 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"Tinyproxy\"\r\n"
                + "Content-Length: 9\r\nConnection: close\r\n\r\nforbidden"))
        guard case .reconnect(var machine) = try done.wait() else { Issue.record("expected a reconnect"); return }
        // The new connection starts with the answer.
        guard case .send(let head) = machine.connectionOpened() else { Issue.record("no request"); return }
        #expect(head.headers["Proxy-Authorization"].first?.hasPrefix("Basic ") == true)
    }

    @Test func aBodyThatEndsWithTheConnectionAndNonHTTPAnswers() throws {
        let (channel, done, _) = try setUp(credentials: nil)
        _ = try sent(channel)
        try channel.writeInbound(ByteBuffer(string: "HTTP/1.0 403 Forbidden\r\nContent-Type: text/plain\r\n\r\nno such port"))
        channel.pipeline.fireChannelInactive()
        #expect(throws: ProxyConnectError.denied(target: "gw.example:443", status: 403, reason: "Forbidden (no such port)")) {
            _ = try done.wait()
        }
        let (other, otherDone, _) = try setUp()
        _ = try sent(other)
        try? other.writeInbound(ByteBuffer(string: "SSH-2.0-OpenSSH_9.2\r\n\r\n"))
        #expect(throws: ProxyConnectError.self) { _ = try otherDone.wait() }
    }
}
