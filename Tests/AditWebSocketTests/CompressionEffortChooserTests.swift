import AditWebSocket
import NIOCore
import Testing

/// The effort chooser on a synthetic clock: a modelled connection sends back-to-back bulk messages, each taking
/// the longer of its CPU time (zlib at the level chosen, plus the rest of the relay's work) and its time on the
/// link (compressed size ÷ link rate; the socket backs up when that is the longer), or the application's pace
/// when that is slower. The chooser must find the
/// level that moves most, and spend little on the others.
@Suite struct CompressionEffortChooserTests {
    static let message = 64 << 10

    struct Model {
        var linkRate: Double
        /// zlib's speed (input bytes/s) and ratio per level; level 0 costs nothing and keeps the size.
        var speed: [Int: Double] = [1: 200e6, 3: 150e6, 5: 85e6]
        var ratio: [Int: Double] = [1: 4.3, 3: 4.7, 5: 5.2]
        /// Everything else the relay does per byte, and the application's rate.
        var relayRate = 2e9
        var appRate = Double.infinity
        /// false: the data does not shrink, and the caller's advisor sends it as it is whatever the rung (it
        /// counts under level 0 here, and reaches the chooser as uncompressed).
        var shrinks = true
    }

    struct Run {
        var chooser: CompressionEffortChooser
        /// Seconds and payload bytes per level at which bulk messages went (0: uncompressed).
        var seconds: [Int: Double] = [:]
        var bytes: [Int: Int] = [:]
        var total: Int { bytes.values.reduce(0, +) }
        func share(_ level: Int) -> Double { Double(bytes[level, default: 0]) / Double(total) }
    }

    func run(_ model: Model, seconds: Double, level: Int = 5, from previous: Run? = nil) -> Run {
        var run = previous ?? Run(chooser: CompressionEffortChooser(level: level))
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000 + UInt64((run.seconds.values.reduce(0, +)) * 1e9))
        var elapsed = 0.0
        let size = Double(Self.message)
        while elapsed < seconds {
            let rungLevel = run.chooser.level(forMessageOf: Self.message)
            let level = model.shrinks ? rungLevel : 0
            let deflate = level == 0 ? 0 : size / model.speed[level]!
            let wire = level == 0 ? size : size / model.ratio[level]!
            let step = max(deflate + size / model.relayRate, wire / model.linkRate, size / model.appRate)
            if wire / model.linkRate == step { run.chooser.noteBackedUp() }   // the link was the limit
            now = now + .nanoseconds(Int64(step * 1e9))
            elapsed += step
            run.seconds[level, default: 0] += step
            run.bytes[level, default: 0] += Self.message
            let compressed = level == 0 ? nil : (level: level, size: Int(wire), deflateTime: TimeAmount.nanoseconds(Int64(deflate * 1e9)))
            _ = run.chooser.record(messageSize: Self.message, compressed: compressed, at: now)
        }
        return run
    }

    @Test func theLadderRunsFromUncompressedToTheConfiguredLevel() {
        #expect(CompressionEffortChooser(level: 5).ladder == [0, 1, 3, 5])
        #expect(CompressionEffortChooser(level: 9).ladder == [0, 1, 3, 9])
        #expect(CompressionEffortChooser(level: 2).ladder == [0, 1, 2])
        #expect(CompressionEffortChooser(level: 1).ladder == [0, 1])
        var chooser = CompressionEffortChooser(level: 5)
        #expect(chooser.level == 5, "it starts at the configured level")
        #expect(chooser.level(forMessageOf: 64 << 10) == 5)
    }

    @Test func onTheUncompressedRungOnlyTheSamplesAreCompressed() {
        // Drive it to the uncompressed rung on a fast link first.
        var chooser = run(Model(linkRate: 1e9), seconds: 1).chooser
        #expect(chooser.level == 0)
        #expect(chooser.level(forMessageOf: 1000) == 0, "a small message goes as it is")
        let bulk = (0..<2_000).map { _ in chooser.level(forMessageOf: 64 << 10) }
        #expect(bulk.allSatisfy { $0 == 0 }, "no sample is due between epochs")
        // Bulk messages keep coming: within a few epochs a sample is due, and only a bulk message takes it.
        var now = NIODeadline.uptimeNanoseconds(100_000_000_000)
        var sampled = false
        for _ in 0..<20_000 {  // 64 KiB per 64 µs: 1.3 s, dozens of epochs
            now = now + .microseconds(64)
            #expect(chooser.level(forMessageOf: 1000) == 0)
            if chooser.level(forMessageOf: 64 << 10) == 1 {
                sampled = true
                break
            }
            _ = chooser.record(messageSize: 64 << 10, compressed: nil, at: now)
        }
        #expect(sampled, "no sample came due")
    }

    @Test func aFastLinkEndsUncompressedButForTheSamples() {
        // Loopback: 1 GB/s uncompressed, far beyond what any level compresses.
        let r = run(Model(linkRate: 1e9), seconds: 10)
        #expect(r.chooser.level == 0)
        #expect(r.share(0) > 0.995, "bytes per level: \(r.bytes)")
        // Three epochs of at least 20 ms find the way down (a try that wins is the next move's measurement);
        // then only the samples are compressed (about 40 ms in 10 s).
        let compressing = r.seconds.filter { $0.key > 0 }.values.reduce(0, +)
        #expect(compressing < 0.12, "spent \(compressing) s of 10 compressing: \(r.seconds)")
    }

    @Test func aSlowLinkCompressesAtTheLevelThatMovesMost() {
        // 100 Mbit/s: level 5 moves 12.5 × 5.2 = 65 MB/s (zlib could do 85), level 3 59, level 1 54.
        let r = run(Model(linkRate: 12.5e6), seconds: 20)
        #expect(r.chooser.level == 5)
        #expect(r.share(5) > 0.9, "bytes per level: \(r.bytes)")
        #expect(r.seconds[0, default: 0] == 0, "uncompressed for \(r.seconds[0, default: 0]) s on a slow link")
        // A slower CPU: level 5 manages only 40 MB/s, level 3 moves 12.5 × 4.7 = 59 MB/s, level 1 54.
        var slow = Model(linkRate: 12.5e6)
        slow.speed = [1: 100e6, 3: 75e6, 5: 40e6]
        let s = run(slow, seconds: 20)
        #expect(s.share(3) > 0.8, "bytes per level: \(s.bytes)")
    }

    @Test func aBusyZlibBehindABackedUpLinkKeepsItsLevel() {
        // Level 5 at 70 MB/s against a link that takes 12.5 × 5.2 = 65 MB/s of payload: zlib is busy 93 % of the
        // time, but the socket backs up, so a lighter level (less payload per wire byte) is never tried.
        var model = Model(linkRate: 12.5e6)
        model.speed = [1: 200e6, 3: 150e6, 5: 70e6]
        let r = run(model, seconds: 20)
        #expect(r.share(5) == 1.0, "bytes per level: \(r.bytes)")
    }

    @Test func anApplicationLimitedStreamGetsTheStrongestLevelItsCPUAffords() {
        // 20 MB/s from the application over a fast link: every level keeps up, level 5 saves most.
        var model = Model(linkRate: 1e9)
        model.appRate = 20e6
        let r = run(model, seconds: 10)
        #expect(r.chooser.level == 5)
        #expect(r.share(5) > 0.8, "bytes per level: \(r.bytes)")
    }

    @Test func dataThatDoesNotShrinkIsNotCompressedAgainOnceUncompressed() {
        // zlib on random data at 40 MB/s is the limit of a fast link: down to uncompressed, and a sample's ratio
        // of 1 never takes it back up. (Over a slow link zlib is not busy and the level stays; skipping such a
        // stream is `CompressionAdvisor`'s part.)
        var model = Model(linkRate: 1e9)
        model.speed = [1: 40e6, 3: 40e6, 5: 40e6]
        model.ratio = [1: 1.0, 3: 1.0, 5: 1.0]
        let r = run(model, seconds: 10)
        #expect(r.chooser.level == 0)
        #expect(r.share(0) > 0.98, "bytes per level: \(r.bytes)")
    }

    @Test func afterDataThatDidNotShrinkABusyZlibGoesStraightToUncompressed() {
        // Loopback behind a peer that takes 800 MB/s (the socket backs up): random data first, which goes as it
        // is on any rung and so measures the uncompressed rate; then compressible data, which zlib at level 5
        // makes at 85 MB/s. One epoch at level 5 shows zlib is the limit far below what went uncompressed: the
        // try goes straight to uncompressed, not through levels 3 and 1 after waiting out the backed-up epochs.
        var random = Model(linkRate: 0.8e9)
        random.shrinks = false
        let first = run(random, seconds: 2)
        #expect(first.chooser.level == 5, "nothing was compressed, nothing said to change: \(first.bytes)")
        #expect(first.chooser.rates[0] != nil)
        let json = run(Model(linkRate: 0.8e9), seconds: 2, from: first)
        #expect(json.chooser.level == 0)
        let compressing = json.seconds.filter { $0.key > 0 }.values.reduce(0, +)
        // One 20 ms epoch at level 5, then only the samples (about 8 ms in 2 s).
        #expect(compressing < 0.05, "spent \(compressing) s compressing: \(json.seconds)")
        #expect(json.seconds[1, default: 0] + json.seconds[3, default: 0] < 0.01, "went through the rungs between: \(json.seconds)")
    }

    @Test func dataThatDidNotShrinkOverASlowLinkLeavesTheLevelAlone() {
        // The same over 100 Mbit/s: the uncompressed rate measured is the link's 12.5 MB/s, far below what level 5
        // moves, so compressible data after it is compressed from its first byte and stays at level 5.
        var random = Model(linkRate: 12.5e6)
        random.shrinks = false
        let first = run(random, seconds: 5)
        let json = run(Model(linkRate: 12.5e6), seconds: 20, from: first)
        #expect(json.chooser.level == 5, "bytes per level: \(json.bytes)")
        #expect(json.seconds[0, default: 0] == first.seconds[0, default: 0], "compressible data went uncompressed: \(json.seconds)")
    }

    @Test func itFollowsTheLinkWhenItChanges() {
        // Loopback first; then the same connection meets a 50 Mbit/s bottleneck, then loopback again.
        let fast = run(Model(linkRate: 1e9), seconds: 5)
        #expect(fast.chooser.level == 0)
        let slow = run(Model(linkRate: 6.25e6), seconds: 30, from: fast)
        #expect(slow.chooser.level >= 3, "bytes per level: \(slow.bytes)")
        #expect(slow.seconds[0, default: 0] - fast.seconds[0, default: 0] < 1, "slow to start compressing: \(slow.seconds)")
        let again = run(Model(linkRate: 1e9), seconds: 10, from: slow)
        #expect(again.chooser.level == 0, "bytes per level: \(again.bytes)")
    }

    @Test func smallMessagesAndPausesMeasureNothing() {
        var chooser = CompressionEffortChooser(level: 5)
        var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
        // Interactive messages, however many, never end an epoch.
        for _ in 0..<100_000 {
            now = now + .microseconds(10)
            let changed = chooser.record(messageSize: 1024, compressed: (1, 200, .microseconds(5)), at: now)
            #expect(!changed)
        }
        #expect(chooser.rates.allSatisfy { $0 == nil })
        // Bulk in bursts separated by pauses longer than `pause`: each burst is under an epoch, nothing is measured.
        for _ in 0..<50 {
            for _ in 0..<10 {
                now = now + .microseconds(100)
                _ = chooser.record(messageSize: Self.message, compressed: nil, at: now)
            }
            now = now + .milliseconds(200)
        }
        #expect(chooser.rates.allSatisfy { $0 == nil }, "\(chooser.rates)")
        #expect(chooser.level == 5)
    }

    @Test func aLevelChangeKeepsTheStreamDecodable() throws {
        let compressor = try DeflateCompressor(windowBits: 15, level: 5)
        let decompressor = try DeflateDecompressor(windowBits: 15)
        let text = String(repeating: "{\"level\":\"info\",\"msg\":\"request served\",\"status\":200}\n", count: 500)
        for level in [5, 1, 3, 9, 1] {
            var compressed = ByteBuffer()
            let accepted = compressor.setLevel(level, emittingInto: &compressed)
            #expect(accepted)
            #expect(compressor.level == level)
            compressor.compress([ByteBuffer(string: text)], into: &compressed)
            var out = ByteBuffer()
            try decompressor.inflate(compressed, into: &out, limit: 1 << 20)
            try decompressor.finishMessage(into: &out, limit: 1 << 20)
            #expect(out == ByteBuffer(string: text), "level \(level)")
        }
    }
}
