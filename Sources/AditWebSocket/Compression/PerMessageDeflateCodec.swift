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
    var statistics = CompressionStatistics()

    init(agreement: PerMessageDeflateAgreement, settings: CompressionSettings) {
        self.agreement = agreement
        self.settings = settings
        self.advisor = CompressionAdvisor(mode: settings.mode, minimumSize: settings.minimumSize)
    }

    /// Whether to compress the next data message, of `size` bytes, mostly from the flow `key`.
    func shouldCompress(size: Int, key: UInt32) -> Bool {
        if advisor.decide(key: key, size: size) == .compress { return true }
        statistics.messagesUncompressed += 1
        statistics.bytesUncompressed += size
        return false
    }

    /// Appends the compressed payload of `parts` (one message) to `output`.
    func compress(_ parts: [ByteBuffer], size: Int, key: UInt32, into output: inout ByteBuffer) throws(PerMessageDeflateError) {
        if compressor == nil {
            compressor = try DeflateCompressor(windowBits: agreement.compressWindowBits, level: settings.level,
                                               memoryLevel: settings.memoryLevel)
        }
        let start = output.writerIndex
        compressor!.compress(parts, into: &output)
        if agreement.compressNoContextTakeover { compressor!.reset() }
        let after = output.writerIndex - start
        advisor.record(key: key, before: size, after: after)
        statistics.messagesCompressed += 1
        statistics.bytesBeforeCompression += size
        statistics.bytesAfterCompression += after
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
