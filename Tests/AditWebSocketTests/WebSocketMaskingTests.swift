import AditWebSocket
import Testing

@Suite struct WebSocketMaskingTests {
    func naive(_ data: [UInt8], key: UInt32) -> [UInt8] {
        let k = [UInt8(key >> 24), UInt8(key >> 16 & 0xFF), UInt8(key >> 8 & 0xFF), UInt8(key & 0xFF)]
        return data.enumerated().map { $0.element ^ k[$0.offset % 4] }
    }

    @Test(arguments: [0, 1, 3, 4, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000, 4099])
    func matchesTheByteByByteDefinition(length: Int) {
        var rng = SystemRandomNumberGenerator()
        let data = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let key = UInt32.random(in: 0...UInt32.max, using: &rng)
        var out = [UInt8](repeating: 0, count: length)
        data.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in WebSocketMasking.apply(key: key, source: src, destination: dst) }
        }
        #expect(out == naive(data, key: key))
        // Masking twice restores the input, in place too.
        out.withUnsafeMutableBytes { buf in
            WebSocketMasking.apply(key: key, source: UnsafeRawBufferPointer(buf), destination: buf)
        }
        #expect(out == data)
    }

    /// RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d.
    @Test func rfcExample() {
        let hello: [UInt8] = Array("Hello".utf8)
        var out = [UInt8](repeating: 0, count: 5)
        hello.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { WebSocketMasking.apply(key: 0x37FA_213D, source: src, destination: $0) }
        }
        #expect(out == [0x7F, 0x9F, 0x4D, 0x51, 0x58])
    }
}
