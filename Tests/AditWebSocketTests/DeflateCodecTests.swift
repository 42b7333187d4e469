import AditWebSocket
import NIOCore
import Testing

@Suite struct DeflateCodecTests {
    func bytes(_ hex: String) -> ByteBuffer {
        var out = ByteBuffer()
        var digits = hex.filter { !$0.isWhitespace }[...]
        while !digits.isEmpty {
            out.writeInteger(UInt8(digits.prefix(2), radix: 16)!)
            digits = digits.dropFirst(2)
        }
        return out
    }

    func inflate(_ d: DeflateDecompressor, _ payload: ByteBuffer, limit: Int = 1 << 20) throws -> ByteBuffer {
        var out = ByteBuffer()
        try d.inflate(payload, into: &out, limit: limit)
        try d.finishMessage(into: &out, limit: limit)
        return out
    }

    /// RFC 7692 §7.2.3: the specification's own examples, byte for byte.
    @Test func rfc7692Examples() throws {
        let compressor = try DeflateCompressor(windowBits: 15, level: 6)
        var first = ByteBuffer()
        compressor.compress([ByteBuffer(string: "Hello")], into: &first)
        #expect(first == bytes("f248cdc9c90700"))  // §7.2.3.1
        var second = ByteBuffer()
        compressor.compress([ByteBuffer(string: "Hello")], into: &second)
        #expect(second == bytes("f200110000"))  // §7.2.3.2, sharing the window

        let d = try DeflateDecompressor(windowBits: 15)
        #expect(try inflate(d, bytes("f248cdc9c90700")) == ByteBuffer(string: "Hello"))
        #expect(try inflate(d, bytes("f200110000")) == ByteBuffer(string: "Hello"))
        #expect(try inflate(d, bytes("0005 00faff 48656c6c6f 00")) == ByteBuffer(string: "Hello"))  // §7.2.3.3 stored
        #expect(try inflate(d, bytes("f348cdc9c90700 00")) == ByteBuffer(string: "Hello"))  // §7.2.3.4 BFINAL
        // After a BFINAL block the next message starts a fresh stream.
        #expect(try inflate(d, bytes("f248cdc9c90700")) == ByteBuffer(string: "Hello"))
    }

    @Test func anEmptyMessageIsOneZeroByte() throws {
        let compressor = try DeflateCompressor(windowBits: 15, level: 6)
        var out = ByteBuffer()
        compressor.compress([], into: &out)
        #expect(out == bytes("00"))
        #expect(try inflate(try DeflateDecompressor(windowBits: 15), out) == ByteBuffer())
    }

    /// Every window size, with and without context takeover, messages split into parts at odd places.
    @Test(arguments: 8...15)
    func roundTripsAtEveryWindowSize(bits: Int) throws {
        var corpus = ByteBuffer()
        for i in 0..<4000 { corpus.writeString("{\"seq\":\(i),\"level\":\"info\",\"msg\":\"request served\",\"ms\":\(i % 97)}\n") }
        var random = SystemRandomNumberGenerator()
        let noise = ByteBuffer(bytes: (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &random) })
        for takeover in [true, false] {
            let compressor = try DeflateCompressor(windowBits: bits, level: 6)
            let decompressor = try DeflateDecompressor(windowBits: bits)
            for message in [corpus, noise, corpus.getSlice(at: 0, length: 10)!, ByteBuffer()] {
                let parts = message.readableBytes > 100
                    ? [message.getSlice(at: 0, length: 33)!, message.getSlice(at: 33, length: message.readableBytes - 33)!]
                    : [message]
                var compressed = ByteBuffer()
                compressor.compress(parts, into: &compressed)
                if message == corpus && bits >= 9 { #expect(compressed.readableBytes < message.readableBytes / 4) }
                #expect(try inflate(decompressor, compressed) == message, "window \(bits), takeover \(takeover)")
                if !takeover {
                    compressor.reset()
                    decompressor.reset()
                }
            }
        }
    }

    /// zlib cannot compress with a 256-byte window; 8 uses Huffman coding only, which a 256-byte inflater takes.
    @Test func windowEightNeedsNoBackReferences() throws {
        let compressor = try DeflateCompressor(windowBits: 8, level: 9)
        let message = ByteBuffer(string: String(repeating: "abcdefgh", count: 2000))
        var compressed = ByteBuffer()
        compressor.compress([message], into: &compressed)
        #expect(compressed.readableBytes < message.readableBytes / 2)  // Huffman still saves
        #expect(try inflate(try DeflateDecompressor(windowBits: 8), compressed) == message)
    }

    @Test func aDecompressionBombStopsAtTheBound() throws {
        let compressor = try DeflateCompressor(windowBits: 15, level: 9)
        var bomb = ByteBuffer()
        compressor.compress([ByteBuffer(repeating: 0, count: 64 << 20)], into: &bomb)
        #expect(bomb.readableBytes < 100 << 10)
        let d = try DeflateDecompressor(windowBits: 15)
        var out = ByteBuffer()
        #expect(throws: PerMessageDeflateError.tooLarge(1 << 20)) {
            try d.inflate(bomb, into: &out, limit: 1 << 20)
            try d.finishMessage(into: &out, limit: 1 << 20)
        }
        // It stopped at the bound rather than inflating 64 MiB (the buffer grows by doubling).
        #expect(out.capacity <= 2 << 20)
    }

    @Test func garbageIsReportedAsCorrupt() throws {
        let d = try DeflateDecompressor(windowBits: 15)
        var out = ByteBuffer()
        #expect(throws: PerMessageDeflateError.self) {
            try d.inflate(bytes("ffffffffffff"), into: &out, limit: 1 << 20)
            try d.finishMessage(into: &out, limit: 1 << 20)
        }
    }
}

@Suite struct CompressionAdvisorTests {
    @Test func smallMessagesAreNotCompressed() {
        var advisor = CompressionAdvisor(mode: .auto, minimumSize: 128)
        #expect(advisor.decide(key: 1, size: 127) == .skip)
        #expect(advisor.decide(key: 1, size: 128) == .compress)
    }

    @Test func anIncompressibleStreamIsSkippedForAGrowingWhile() {
        var advisor = CompressionAdvisor(mode: .auto, minimumSize: 128)
        let size = 64 << 10
        var probes = 0
        var compressedBytes = 0
        for _ in 0..<(1 << 30) / size {  // 1 GiB of random data on one stream
            if advisor.decide(key: 7, size: size) == .compress {
                probes += 1
                compressedBytes += size
                advisor.record(key: 7, before: size, after: size + 20)
            }
        }
        #expect(probes < 30)
        #expect(compressedBytes < (1 << 30) / 100)  // under 1% of the data costs a compression
        // Another stream is judged on its own.
        #expect(advisor.decide(key: 9, size: size) == .compress)
    }

    @Test func aStreamThatTurnsCompressibleIsNoticedAtTheNextProbe() {
        var advisor = CompressionAdvisor(mode: .auto, minimumSize: 128)
        #expect(advisor.decide(key: 3, size: 1000) == .compress)
        advisor.record(key: 3, before: 1000, after: 990)  // under 5% saved: incompressible
        var skipped = 0
        while advisor.decide(key: 3, size: 1000) == .skip { skipped += 1000 }
        #expect(skipped >= 256 << 10 && skipped < (256 << 10) + 1000)
        advisor.record(key: 3, before: 1000, after: 300)
        #expect(advisor.decide(key: 3, size: 1000) == .compress)
        #expect(advisor.decide(key: 3, size: 1000) == .compress)
    }

    @Test func alwaysAndOff() {
        var always = CompressionAdvisor(mode: .always, minimumSize: 128)
        #expect(always.decide(key: 1, size: 1) == .compress)
        always.record(key: 1, before: 100, after: 200)
        #expect(always.decide(key: 1, size: 1000) == .compress)
        var off = CompressionAdvisor(mode: .off, minimumSize: 128)
        #expect(off.decide(key: 1, size: 1 << 20) == .skip)
    }
}
