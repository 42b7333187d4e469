import AditTransport
import AditWebSocket
import Logging
import NIOCore
import NIOEmbedded
import Testing

@Suite struct WebSocketConnectionHandlerTests {
    let allocator = ByteBufferAllocator()

    func makeChannel(role: WebSocketFrameParser.Role = .client, max: Int = 1 << 20) throws -> EmbeddedChannel {
        var config = WebSocketConnectionHandler.Configuration()
        config.maxMessageSize = max
        let channel = EmbeddedChannel(handler: WebSocketConnectionHandler(role: role, configuration: config,
                                                                           logger: Logger(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    func frame(_ opcode: WebSocketOpcode, _ payload: [UInt8], fin: Bool = true, rsv: UInt8 = 0) -> ByteBuffer {
        WebSocketFrame.encode(fin: fin, rsv: rsv, opcode: opcode, payload: ByteBuffer(bytes: payload), maskKey: nil,
                              allocator: allocator)
    }

    /// Parses everything the handler wrote (the client side masks).
    func written(_ channel: EmbeddedChannel) throws -> [WebSocketFrame] {
        var parser = WebSocketFrameParser(role: .server, maxFramePayload: 1 << 24)
        while let b = try channel.readOutbound(as: ByteBuffer.self) { parser.append(b) }
        var out: [WebSocketFrame] = []
        while let f = try parser.next(allocator: allocator) { out.append(f) }
        return out
    }

    @Test func binaryMessagesGoUpFragmentsAreJoined() throws {
        let channel = try makeChannel()
        try channel.writeInbound(frame(.binary, [1, 2, 3]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [1, 2, 3]))
        try channel.writeInbound(frame(.binary, [4], fin: false))
        try channel.writeInbound(frame(.ping, [9]))  // control frames may interleave
        try channel.writeInbound(frame(.continuation, [5], fin: false))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        try channel.writeInbound(frame(.continuation, [6]))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(bytes: [4, 5, 6]))
        let replies = try written(channel)
        #expect(replies.map(\.opcode) == [.pong])
        #expect(replies.first?.payload == ByteBuffer(bytes: [9]))
    }

    @Test func outgoingMessagesAreMaskedBinaryFrames() throws {
        let channel = try makeChannel(role: .client)
        var message = TunnelMessage()
        message.append(ByteBuffer(string: "pay"))
        message.append(ByteBuffer(string: "lo"))
        message.append(ByteBuffer(string: "ad"))  // parts at odd offsets exercise the mask rotation
        try channel.writeOutbound(message)
        var raw = ByteBuffer()
        while var b = try channel.readOutbound(as: ByteBuffer.self) { raw.writeBuffer(&b) }
        #expect(raw.getInteger(at: 1, as: UInt8.self)! & 0x80 != 0)  // mask bit set
        var parser = WebSocketFrameParser(role: .server, maxFramePayload: 100)
        parser.append(raw)
        let f = try #require(try parser.next(allocator: allocator))
        #expect(f.opcode == .binary)
        #expect(f.payload == ByteBuffer(string: "payload"))
    }

    @Test func serverFramesAreUnmasked() throws {
        let channel = try makeChannel(role: .server)
        try channel.writeOutbound(TunnelMessage(ByteBuffer(string: "x")))
        var raw = ByteBuffer()
        while var b = try channel.readOutbound(as: ByteBuffer.self) { raw.writeBuffer(&b) }
        #expect(Array(raw.readableBytesView) == [0x82, 0x01, UInt8(ascii: "x")])
    }

    @Test func rsvBitsWithoutAnExtensionClose1002() throws {
        let channel = try makeChannel()
        _ = try? channel.writeInbound(frame(.binary, [1], rsv: 0x40))
        let out = try written(channel)
        #expect(out.last?.opcode == .close)
        #expect(out.last?.payload.getInteger(at: out.last!.payload.readerIndex, as: UInt16.self) == 1002)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test func textMessagesClose1003() throws {
        let channel = try makeChannel()
        _ = try? channel.writeInbound(frame(.text, Array("hi".utf8)))
        let out = try written(channel)
        #expect(out.last?.payload.getInteger(at: out.last!.payload.readerIndex, as: UInt16.self) == 1003)
    }

    @Test func oversizedFragmentedMessageCloses1009() throws {
        let channel = try makeChannel(max: 10)
        try channel.writeInbound(frame(.binary, [UInt8](repeating: 0, count: 8), fin: false))
        _ = try? channel.writeInbound(frame(.continuation, [UInt8](repeating: 0, count: 8)))
        let out = try written(channel)
        #expect(out.last?.payload.getInteger(at: out.last!.payload.readerIndex, as: UInt16.self) == 1009)
    }

    @Test func peerCloseIsEchoedAndTheConnectionCloses() throws {
        let channel = try makeChannel()
        try channel.writeInbound(frame(.close, [0x03, 0xE8]))
        let out = try written(channel)
        #expect(out.map(\.opcode) == [.close])
        #expect(!channel.isActive)
    }

    @Test func localCloseWaitsForThePeersCloseFrame() throws {
        let channel = try makeChannel()
        let closed = channel.close()
        #expect(try written(channel).map(\.opcode) == [.close])
        #expect(channel.isActive)  // waiting for the answer
        try channel.writeInbound(frame(.close, [0x03, 0xE8]))
        #expect(!channel.isActive)
        try closed.wait()
    }

    @Test func localCloseGivesUpAfterTheTimeout() throws {
        let channel = try makeChannel()
        _ = channel.close()
        #expect(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(4))
        #expect(!channel.isActive)
    }
}
