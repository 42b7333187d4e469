import AditTransport
import AditWebSocket
import Logging
import NIOCore
import NIOEmbedded
import Testing

/// permessage-deflate inside the WebSocket connection handler: RSV1 rules, inflating, the bound, and what the
/// handler sends.
@Suite struct WebSocketCompressionTests {
    let allocator = ByteBufferAllocator()
    let agreement = PerMessageDeflateAgreement(compressWindowBits: 15, decompressWindowBits: 15,
                                               compressNoContextTakeover: false, decompressNoContextTakeover: false)

    func makeChannel(role: WebSocketFrameParser.Role = .server, deflate: PerMessageDeflateAgreement?,
                     mode: CompressionMode = .auto, max: Int = 1 << 20) throws -> EmbeddedChannel {
        var config = WebSocketConnectionHandler.Configuration()
        config.maxMessageSize = max
        config.deflate = deflate
        config.compression.mode = mode
        let channel = EmbeddedChannel(handler: WebSocketConnectionHandler(role: role, configuration: config,
                                                                           logger: Logger(label: "test")))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    /// A frame as the peer would send it (unmasked: the tests play the client's peer with role .server parsing).
    func frame(_ opcode: WebSocketOpcode, _ payload: ByteBuffer, fin: Bool = true, rsv: UInt8 = 0, masked: Bool = true) -> ByteBuffer {
        WebSocketFrame.encode(fin: fin, rsv: rsv, opcode: opcode, payload: payload, maskKey: masked ? 0x1234_5678 : nil,
                              allocator: allocator)
    }

    func written(_ channel: EmbeddedChannel, from role: WebSocketFrameParser.Role) throws -> [WebSocketFrame] {
        var parser = WebSocketFrameParser(role: role == .server ? .client : .server, maxFramePayload: 1 << 24)
        while let b = try channel.readOutbound(as: ByteBuffer.self) { parser.append(b) }
        var out: [WebSocketFrame] = []
        while let f = try parser.next(allocator: allocator) { out.append(f) }
        return out
    }

    func closeCode(_ frames: [WebSocketFrame]) -> UInt16? {
        guard let last = frames.last, last.opcode == .close else { return nil }
        return last.payload.getInteger(at: last.payload.readerIndex, as: UInt16.self)
    }

    func compressed(_ text: String, with compressor: DeflateCompressor) -> ByteBuffer {
        var out = ByteBuffer()
        compressor.compress([ByteBuffer(string: text)], into: &out)
        return out
    }

    @Test func compressedAndPlainMessagesMixAndFragmentsCarryRSV1OnlyFirst() throws {
        let channel = try makeChannel(deflate: agreement)
        let peer = try DeflateCompressor(windowBits: 15, level: 6)
        try channel.writeInbound(frame(.binary, compressed("Hello, Hello, Hello", with: peer), rsv: 0x40))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "Hello, Hello, Hello"))
        try channel.writeInbound(frame(.binary, ByteBuffer(string: "plain")))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: "plain"))
        // A fragmented compressed message, split at an odd byte, with a ping in between.
        let long = String(repeating: "fragmented and compressed; ", count: 200)
        let payload = compressed(long, with: peer)
        try channel.writeInbound(frame(.binary, payload.getSlice(at: 0, length: 7)!, fin: false, rsv: 0x40))
        try channel.writeInbound(frame(.ping, ByteBuffer(string: "p")))
        try channel.writeInbound(frame(.continuation, payload.getSlice(at: 7, length: payload.readableBytes - 7)!))
        #expect(try channel.readInbound(as: ByteBuffer.self) == ByteBuffer(string: long))
        // The pong is never compressed.
        let out = try written(channel, from: .server)
        #expect(out.map(\.opcode) == [.pong])
        #expect(out[0].rsv == 0)
    }

    @Test func rsv1WhereItMayNotBeClosesWith1002() throws {
        let peer = try DeflateCompressor(windowBits: 15, level: 6)
        let cases: [(String, [ByteBuffer])] = [
            ("continuation", [frame(.binary, ByteBuffer(string: "a"), fin: false), frame(.continuation, ByteBuffer(string: "b"), rsv: 0x40)]),
            ("ping", [frame(.ping, ByteBuffer(string: "x"), rsv: 0x40)]),
            ("rsv2", [frame(.binary, ByteBuffer(string: "x"), rsv: 0x20)]),
        ]
        for (name, frames) in cases {
            let channel = try makeChannel(deflate: agreement)
            for f in frames { _ = try? channel.writeInbound(f) }
            #expect(closeCode(try written(channel, from: .server)) == 1002, "\(name)")
            // Nothing of a message that broke the rules is passed up (the fragmented one never completed).
            #expect(try channel.readInbound(as: ByteBuffer.self) == nil, "\(name)")
        }
        // Nothing negotiated: a compressed message is a protocol error.
        let plain = try makeChannel(deflate: nil)
        _ = try? plain.writeInbound(frame(.binary, compressed("Hello", with: peer), rsv: 0x40))
        #expect(closeCode(try written(plain, from: .server)) == 1002)
        #expect(try plain.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test func aDecompressionBombCloses1009() throws {
        let channel = try makeChannel(deflate: agreement, max: 1 << 20)
        let peer = try DeflateCompressor(windowBits: 15, level: 9)
        var bomb = ByteBuffer()
        peer.compress([ByteBuffer(repeating: 0, count: 32 << 20)], into: &bomb)  // 32 MiB in ~32 KiB
        _ = try? channel.writeInbound(frame(.binary, bomb, rsv: 0x40))
        #expect(closeCode(try written(channel, from: .server)) == 1009)
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
    }

    @Test func corruptDeflateDataCloses1007() throws {
        let channel = try makeChannel(deflate: agreement)
        _ = try? channel.writeInbound(frame(.binary, ByteBuffer(bytes: [0xFF, 0xFF, 0xFF, 0xFF]), rsv: 0x40))
        #expect(closeCode(try written(channel, from: .server)) == 1007)
    }

    /// RFC 6455 §8.1: a close reason that is not UTF-8 fails the connection with 1007, not 1000.
    @Test func aCloseReasonThatIsNotUTF8Closes1007() throws {
        let channel = try makeChannel(deflate: nil)
        _ = try? channel.writeInbound(frame(.close, ByteBuffer(bytes: [0x03, 0xE8, 0xFF, 0xFE, 0x41])))
        #expect(closeCode(try written(channel, from: .server)) == 1007)
        let valid = try makeChannel(deflate: nil)
        _ = try? valid.writeInbound(frame(.close, ByteBuffer(bytes: [0x03, 0xE8] + Array("bye ✓".utf8))))
        #expect(closeCode(try written(valid, from: .server)) == 1000)
    }

    /// Both roles: what the handler sends inflates back, masked or not, and the statistics add up.
    @Test(arguments: [WebSocketFrameParser.Role.client, .server])
    func outgoingMessagesAreCompressedAndDecodable(role: WebSocketFrameParser.Role) throws {
        let channel = try makeChannel(role: role, deflate: agreement)
        let text = String(repeating: "{\"event\":\"login\",\"user\":\"alice\"}\n", count: 300)
        var message = TunnelMessage()
        message.append(ByteBuffer(string: String(text.prefix(101))))
        message.append(ByteBuffer(string: String(text.dropFirst(101))))
        try channel.writeOutbound(message)
        try channel.writeOutbound(TunnelMessage(ByteBuffer(string: "tiny")))  // under the minimum: as it is
        let frames = try written(channel, from: role)
        #expect(frames.count == 2)
        #expect(frames[0].rsv == 0x40)
        #expect(frames[0].payload.readableBytes < text.utf8.count / 10)
        let inflater = try DeflateDecompressor(windowBits: 15)
        var out = ByteBuffer()
        try inflater.inflate(frames[0].payload, into: &out, limit: 1 << 20)
        try inflater.finishMessage(into: &out, limit: 1 << 20)
        #expect(out == ByteBuffer(string: text))
        #expect(frames[1].rsv == 0)
        #expect(frames[1].payload == ByteBuffer(string: "tiny"))
        let handler = try channel.pipeline.syncOperations.handler(type: WebSocketConnectionHandler.self)
        let stats = try #require(handler.compressionStatistics)
        #expect(stats.messagesCompressed == 1)
        #expect(stats.bytesBeforeCompression == text.utf8.count)
        #expect(stats.bytesAfterCompression == frames[0].payload.readableBytes)
        #expect(stats.messagesUncompressed == 1)
    }

    @Test func autoStopsCompressingAnIncompressibleFlowAndAlwaysDoesNot() throws {
        var random = SystemRandomNumberGenerator()
        let noise = (0..<8).map { _ in ByteBuffer(bytes: (0..<(32 << 10)).map { _ in UInt8.random(in: 0...255, using: &random) }) }
        for mode in [CompressionMode.auto, .always] {
            let channel = try makeChannel(deflate: agreement, mode: mode)
            for buffer in noise {
                var message = TunnelMessage(buffer)
                message.compressionKey = 5
                try channel.writeOutbound(message)
            }
            let frames = try written(channel, from: .server)
            let compressedCount = frames.filter { $0.rsv == 0x40 }.count
            #expect(compressedCount == (mode == .auto ? 1 : 8), "\(mode)")
        }
    }
}
