import NIOCore

/// permessage-deflate for one connection, as agreed in its handshake: the two zlib streams (created on first
/// use, so a connection that never sends a compressible message never pays for a compressor), the advisor, and
/// the totals.
final class PerMessageDeflateCodec {
    let agreement: PerMessageDeflateAgreement
    private let settings: CompressionSettings
    private var compressor: DeflateCompressor?
    private var decompressor: DeflateDecompressor?
    private var advisor: CompressionAdvisor
    /// How hard `auto` compresses bulk data, from what each effort moves (nil in `always`: the configured level).
    /// Reached only in place (`effort?.…`) or after checking `adapting`: comparing it with nil copies the whole
    /// value, arrays and all (callgrind: about 900 instructions on every message).
    private var effort: CompressionEffortChooser?
    private var adapting = false
    /// The level `shouldCompress` chose for the message `compress` is about to get.
    private var pendingLevel: Int
    var statistics = CompressionStatistics()

    init(agreement: PerMessageDeflateAgreement, settings: CompressionSettings) {
        self.agreement = agreement
        self.settings = settings
        self.advisor = CompressionAdvisor(mode: settings.mode, minimumSize: settings.minimumSize)
        if settings.mode == .auto && settings.adaptsLevel {
            self.effort = CompressionEffortChooser(level: settings.level)
            self.adapting = true
        }
        self.pendingLevel = settings.level
        statistics.level = settings.level
    }

    /// Whether to compress the next data message, of `size` bytes, mostly from the flow `key`.
    func shouldCompress(size: Int, key: UInt32) -> Bool {
        let level = effort?.level(forMessageOf: size) ?? settings.level
        if level > 0, advisor.decide(key: key, size: size) == .compress {
            pendingLevel = level
            return true
        }
        statistics.messagesUncompressed += 1
        statistics.bytesUncompressed += size
        noteEffort(size: size, compressed: nil)
        return false
    }

    /// Appends the compressed payload of `parts` (one message) to `output`.
    func compress(_ parts: [ByteBuffer], size: Int, key: UInt32, into output: inout ByteBuffer) throws(PerMessageDeflateError) {
        if compressor == nil {
            compressor = try DeflateCompressor(windowBits: agreement.compressWindowBits, level: pendingLevel,
                                               memoryLevel: settings.memoryLevel)
        }
        // Only messages the chooser learns from are timed (two clock reads), not the interactive ones.
        let started: NIODeadline? = adapting && size >= CompressionEffortChooser.smallestMeasured ? .now() : nil
        let start = output.writerIndex
        if compressor!.level != pendingLevel && !compressor!.setLevel(pendingLevel, emittingInto: &output) {
            // Not expected between messages; keep the level zlib has and stop adapting.
            effort = nil
            adapting = false
        }
        compressor!.compress(parts, into: &output)
        if agreement.compressNoContextTakeover { compressor!.reset() }
        let after = output.writerIndex - start
        advisor.record(key: key, before: size, after: after)
        statistics.messagesCompressed += 1
        statistics.bytesBeforeCompression += size
        statistics.bytesAfterCompression += after
        if let started {
            let now = NIODeadline.now()
            noteEffort(size: size, compressed: (compressor!.level, after, now - started), at: now)
        }
    }

    /// The socket could not take more at some point: the link, not zlib, was the limit then.
    func noteBackedUp() {
        effort?.noteBackedUp()
    }

    private func noteEffort(size: Int, compressed: (level: Int, size: Int, deflateTime: TimeAmount)?,
                            at now: NIODeadline? = nil) {
        guard adapting, size >= CompressionEffortChooser.smallestMeasured,
              effort?.record(messageSize: size, compressed: compressed, at: now ?? .now()) == true,
              let level = effort?.level else { return }
        statistics.level = level
        statistics.levelChanges += 1
    }

    /// Inflates one frame of a compressed message into `output`; `last` ends the message.
    func inflate(_ payload: ByteBuffer, last: Bool, into output: inout ByteBuffer, limit: Int) throws(PerMessageDeflateError) {
        if decompressor == nil { decompressor = try DeflateDecompressor(windowBits: agreement.decompressWindowBits) }
        let before = output.readableBytes
        try decompressor!.inflate(payload, into: &output, limit: limit)
        statistics.bytesBeforeInflating += payload.readableBytes
        if last {
            try decompressor!.finishMessage(into: &output, limit: limit)
            if agreement.decompressNoContextTakeover { decompressor!.reset() }
            statistics.messagesInflated += 1
        }
        statistics.bytesAfterInflating += output.readableBytes - before
    }
}
