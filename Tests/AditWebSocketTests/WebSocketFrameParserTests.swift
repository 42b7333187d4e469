import AditWebSocket
import NIOCore
import Testing

@Suite struct WebSocketFrameParserTests {
    let allocator = ByteBufferAllocator()

    func frames(_ specs: [(WebSocketOpcode, Int, Bool)], masked: Bool) -> (ByteBuffer, [WebSocketFrame]) {
        var wire = ByteBuffer()
        var expected: [WebSocketFrame] = []
        var rng = SystemRandomNumberGenerator()
        for (opcode, length, fin) in specs {
            let payload = ByteBuffer(bytes: (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) })
            var encoded = WebSocketFrame.encode(fin: fin, opcode: opcode, payload: payload,
                                                maskKey: masked ? UInt32.random(in: 0...UInt32.max, using: &rng) : nil,
                                                allocator: allocator)
            wire.writeBuffer(&encoded)
            expected.append(WebSocketFrame(fin: fin, opcode: opcode, payload: payload))
        }
        return (wire, expected)
    }

    @Test(arguments: [0, 1, 125, 126, 127, 65535, 65536, 300_000])
    func lengthEncodingsRoundTrip(length: Int) throws {
        for masked in [false, true] {
            let (wire, expected) = frames([(.binary, length, true)], masked: masked)
            var parser = WebSocketFrameParser(role: masked ? .server : .client, maxFramePayload: 1 << 20)
            parser.append(wire)
            #expect(try parser.next(allocator: allocator) == expected[0])
            #expect(try parser.next(allocator: allocator) == nil)
            #expect(parser.bufferedBytes == 0)
        }
    }

    @Test func inputSplitAtEveryByteBoundaryGivesTheSameFrames() throws {
        let specs: [(WebSocketOpcode, Int, Bool)] = [(.binary, 3, false), (.continuation, 130, true), (.ping, 5, true),
                                                     (.binary, 0, true), (.binary, 70_000, true), (.close, 2, true)]
        for masked in [false, true] {
            let (wire, expected) = frames(specs, masked: masked)
            let bytes = Array(wire.readableBytesView)
            for cut in stride(from: 0, through: bytes.count, by: bytes.count > 2000 ? 97 : 1) {
                var parser = WebSocketFrameParser(role: masked ? .server : .client, maxFramePayload: 1 << 20)
                var got: [WebSocketFrame] = []
                parser.append(ByteBuffer(bytes: bytes[..<cut]))
                while let f = try parser.next(allocator: allocator) { got.append(f) }
                parser.append(ByteBuffer(bytes: bytes[cut...]))
                while let f = try parser.next(allocator: allocator) { got.append(f) }
                #expect(got == expected, "split at \(cut)")
            }
            // And one byte at a time.
            var parser = WebSocketFrameParser(role: masked ? .server : .client, maxFramePayload: 1 << 20)
            var got: [WebSocketFrame] = []
            for b in bytes {
                parser.append(ByteBuffer(bytes: [b]))
                while let f = try parser.next(allocator: allocator) { got.append(f) }
            }
            #expect(got == expected)
        }
    }

    @Test func maskingRulesAreEnforcedPerRole() {
        let (unmasked, _) = frames([(.binary, 4, true)], masked: false)
        var server = WebSocketFrameParser(role: .server, maxFramePayload: 100)
        server.append(unmasked)
        #expect(throws: WebSocketProtocolError.self) { _ = try server.next(allocator: allocator) }

        let (masked, _) = frames([(.binary, 4, true)], masked: true)
        var client = WebSocketFrameParser(role: .client, maxFramePayload: 100)
        client.append(masked)
        #expect(throws: WebSocketProtocolError.self) { _ = try client.next(allocator: allocator) }
    }

    @Test func badFramesCloseWithTheRightCode() {
        func code(_ bytes: [UInt8], max: Int = 100) -> UInt16? {
            var p = WebSocketFrameParser(role: .client, maxFramePayload: max)
            p.append(ByteBuffer(bytes: bytes))
            do {
                _ = try p.next(allocator: allocator)
                return nil
            } catch {
                return error.closeCode.rawValue
            }
        }
        #expect(code([0x83, 0]) == 1002)  // reserved opcode 3
        #expect(code([0x09, 0]) == 1002)  // fragmented ping
        #expect(code([0x89, 126, 0, 126] + [UInt8](repeating: 0, count: 126)) == 1002)  // control frame > 125
        #expect(code([0x82, 101] + [UInt8](repeating: 0, count: 101)) == 1009)  // over the limit
        #expect(code([0x82, 127, 0x80, 0, 0, 0, 0, 0, 0, 0]) == 1009)  // absurd 64-bit length
        #expect(code([0x82, 126, 0, 5, 1, 2, 3, 4, 5]) == 1002)  // non-minimal length
    }
}
