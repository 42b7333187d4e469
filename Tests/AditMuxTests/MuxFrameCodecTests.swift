import AditMux
import NIOCore
import Testing

@Suite struct MuxFrameCodecTests {
    static let frames: [MuxFrame] = [
        .data(StreamID(1), ByteBuffer(string: "hello"), fin: false),
        .data(StreamID(3), ByteBuffer(), fin: true),
        .data(StreamID(0x7FFF_FFFF), ByteBuffer(repeating: 7, count: 70_000), fin: true),
        .open(StreamID(5), MuxOpenRequest(target: MuxTarget(host: .ipv4(0x7F00_0001), port: 22))),
        .open(StreamID(7), MuxOpenRequest(target: MuxTarget(hostText: "::1", port: 443))),
        .open(StreamID(9), MuxOpenRequest(target: MuxTarget(hostText: "Example.COM", port: 65535))),
        .open(StreamID(11), MuxOpenRequest(target: MuxTarget(hostText: "10.0.0.53", port: 53), kind: .datagram)),
        .open(StreamID(12), MuxOpenRequest(target: MuxTarget(hostText: "203.0.113.9", port: 40000), listener: StreamID(13))),
        .open(StreamID(14), MuxOpenRequest(target: MuxTarget(hostText: "::1", port: 5353), kind: .datagram,
                                           listener: StreamID(15))),
        .openOK(StreamID(2), bound: nil),
        .openOK(StreamID(17), bound: MuxTarget(hostText: "127.0.0.1", port: 8022)),
        .listen(StreamID(19), MuxListenRequest(bind: MuxTarget(hostText: "0.0.0.0", port: 0))),
        .listen(StreamID(21), MuxListenRequest(bind: MuxTarget(hostText: "::", port: 5353), kind: .datagram)),
        .reset(StreamID(4), .notAllowed, reason: "127.0.0.1:9 is not allowed"),
        .reset(StreamID(6), .refused, reason: ""),
        .windowUpdate(StreamID(8), increment: 0x7FFF_FFFF),
        .ping(0x0102_0304_0506_0708),
        .pong(42),
        .goAway(lastStreamID: StreamID(11), code: .resourceLimit, reason: "shutting down"),
        .hello(MuxHello(initialWindow: 4 << 20, maxMessageSize: 1 << 20)),
        .hello(MuxHello(initialWindow: 1 << 16, maxMessageSize: 1 << 20, features: [.reverse, .datagrams])),
    ]

    @Test(arguments: frames)
    func roundTrip(_ frame: MuxFrame) throws {
        var buffer = ByteBuffer()
        MuxFrameCodec.encode(frame, into: &buffer)
        let decoded = try MuxFrameCodec.decode(from: &buffer)
        #expect(decoded == frame)
        #expect(buffer.readableBytes == 0)
        #expect(try MuxFrameCodec.decode(from: &buffer) == nil)
    }

    @Test func manyFramesInOneMessageDecodeInOrder() throws {
        var buffer = ByteBuffer()
        for frame in Self.frames { MuxFrameCodec.encode(frame, into: &buffer) }
        var decoded: [MuxFrame] = []
        while let frame = try MuxFrameCodec.decode(from: &buffer) { decoded.append(frame) }
        #expect(decoded == Self.frames)
    }

    @Test func headerLayoutMatchesTheSpec() {
        var buffer = ByteBuffer()
        MuxFrameCodec.encode(.data(StreamID(0x0102_0304), ByteBuffer(bytes: [0xAA, 0xBB]), fin: true), into: &buffer)
        // length 2 (24 bits), type 0, flags FIN, stream id, payload
        #expect(Array(buffer.readableBytesView) == [0, 0, 2, 0, 1, 0x01, 0x02, 0x03, 0x04, 0xAA, 0xBB])
    }

    @Test func everyTruncationIsAnErrorNotACrash() throws {
        for frame in Self.frames {
            var whole = ByteBuffer()
            MuxFrameCodec.encode(frame, into: &whole)
            for cut in 1..<whole.readableBytes {
                var partial = whole.getSlice(at: 0, length: cut)!
                #expect(throws: MuxProtocolError.self) { _ = try MuxFrameCodec.decode(from: &partial) }
            }
        }
    }

    @Test func unknownFrameTypesAreSkipped() throws {
        var buffer = ByteBuffer()
        buffer.writeMultipleIntegers(UInt32(3) << 8 | 0x42, UInt8(0), UInt32(1))
        buffer.writeBytes([1, 2, 3])
        MuxFrameCodec.encode(.ping(1), into: &buffer)
        #expect(try MuxFrameCodec.decode(from: &buffer) == .unknown(type: 0x42, StreamID(1)))
        #expect(try MuxFrameCodec.decode(from: &buffer) == .ping(1))
    }

    @Test func malformedFramesAreRejectedWithTheirReason() {
        func decode(_ bytes: [UInt8]) throws -> MuxFrame? {
            var b = ByteBuffer(bytes: bytes)
            return try MuxFrameCodec.decode(from: &b)
        }
        // DATA on stream 0
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 0, 0, 0, 0, 0, 0, 0]) }
        // WINDOW_UPDATE of 0
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 4, 4, 0, 0, 0, 0, 1, 0, 0, 0, 0]) }
        // PING on a stream
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 8, 5, 0, 0, 0, 0, 1] + [UInt8](repeating: 0, count: 8)) }
        // OPEN with unknown address type 9
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 3, 1, 0, 0, 0, 0, 1, 9, 0, 22]) }
        // OPEN with port 0
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 7, 1, 0, 0, 0, 0, 1, 1, 127, 0, 0, 1, 0, 0]) }
        // OPEN with a name containing a space
        #expect(throws: MuxProtocolError.self) { try decode([0, 0, 6, 1, 0, 0, 0, 0, 1, 3, 1, 0x20, 0, 22]) }
    }

    @Test func flagsAndTheListenerIDAreWhereTheSpecSaysTheyAre() throws {
        var buffer = ByteBuffer()
        let request = MuxOpenRequest(target: MuxTarget(hostText: "10.0.0.1", port: 53), kind: .datagram, listener: StreamID(3))
        MuxFrameCodec.encode(.open(StreamID(2), request), into: &buffer)
        // length 11, type OPEN, flags DATAGRAM|REVERSE, stream 2, listener 3, IPv4 10.0.0.1, port 53
        #expect(Array(buffer.readableBytesView) == [0, 0, 11, 1, 0x6, 0, 0, 0, 2, 0, 0, 0, 3, 1, 10, 0, 0, 1, 0, 53])
    }

    @Test func aNineByteHelloFromAnOlderPeerAnnouncesNoFeatures() throws {
        var buffer = ByteBuffer(bytes: [0, 0, 9, 8, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0x10, 0, 0])
        #expect(try MuxFrameCodec.decode(from: &buffer) == .hello(MuxHello(initialWindow: 65536, maxMessageSize: 1 << 20)))
    }

    @Test func aListenMayAskForPortZeroButAnOpenMayNot() throws {
        var listen = ByteBuffer(bytes: [0, 0, 7, 9, 0, 0, 0, 0, 1, 1, 127, 0, 0, 1, 0, 0])
        #expect(try MuxFrameCodec.decode(from: &listen)
            == .listen(StreamID(1), MuxListenRequest(bind: MuxTarget(hostText: "127.0.0.1", port: 0))))
        var reverse = ByteBuffer(bytes: [0, 0, 4, 1, 4, 0, 0, 0, 2, 0, 0, 0, 0])
        #expect(throws: MuxProtocolError.self) { _ = try MuxFrameCodec.decode(from: &reverse) }  // listener 0, no target
    }

    @Test func longReasonsAreCutOnACharacterBoundary() throws {
        let reason = String(repeating: "é", count: 200)  // 400 bytes of UTF-8
        var buffer = ByteBuffer()
        MuxFrameCodec.encode(.reset(StreamID(1), .internalError, reason: reason), into: &buffer)
        guard case .reset(_, _, let got) = try MuxFrameCodec.decode(from: &buffer) else {
            Issue.record("not a RESET")
            return
        }
        #expect(got.utf8.count <= MuxFrame.maxReasonBytes)
        #expect(got == String(repeating: "é", count: got.count))
    }

    /// A peer's reasons reach log lines and messages: escaped and bounded when decoded, so a RESET or GOAWAY
    /// cannot forge a log line or flood the log (issue 11, #7).
    @Test func peerReasonsAreEscapedAndBoundedWhenDecoded() throws {
        var buffer = ByteBuffer()
        MuxFrameCodec.encode(.reset(StreamID(1), .refused, reason: "no\n2026-11-28 error: forged\u{1b}[31m"), into: &buffer)
        MuxFrameCodec.encode(.goAway(lastStreamID: StreamID(3), code: .closed, reason: String(repeating: "a", count: 256)),
                             into: &buffer)
        guard case .reset(_, _, let reset) = try MuxFrameCodec.decode(from: &buffer),
            case .goAway(_, _, let goAway) = try MuxFrameCodec.decode(from: &buffer)
        else {
            Issue.record("not a RESET and a GOAWAY")
            return
        }
        #expect(reset == "no\\n2026-11-28 error: forged\\u{1b}[31m")
        #expect(!reset.contains("\n") && !reset.unicodeScalars.contains("\u{1b}"))
        #expect(goAway == String(repeating: "a", count: 200) + "…(+56 bytes)")
    }
}
