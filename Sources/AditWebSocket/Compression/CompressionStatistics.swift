/// Plain per-connection totals of permessage-deflate, kept on the event loop and read by the metrics exporter.
public struct CompressionStatistics: Sendable, Equatable {
    /// Data messages we compressed, and their size before and after.
    public var messagesCompressed = 0
    public var bytesBeforeCompression = 0
    public var bytesAfterCompression = 0
    /// Data messages sent as they were (too small, incompressible stream, or nothing negotiated).
    public var messagesUncompressed = 0
    public var bytesUncompressed = 0
    /// Compressed messages received, and their size on the wire and after inflating.
    public var messagesInflated = 0
    public var bytesBeforeInflating = 0
    public var bytesAfterInflating = 0
    /// The zlib level bulk messages are compressed at now (0: sent uncompressed, the link outruns zlib), and
    /// how often `auto` changed it.
    public var level = 0
    public var levelChanges = 0

    public init() {}

    /// Bytes before ÷ bytes after, over what we compressed (1 when nothing was).
    public var sendRatio: Double {
        bytesAfterCompression == 0 ? 1 : Double(bytesBeforeCompression) / Double(bytesAfterCompression)
    }

    /// The same for everything sent, compressed or not: what compression saved on the wire overall.
    public var overallSendRatio: Double {
        let after = bytesAfterCompression + bytesUncompressed
        return after == 0 ? 1 : Double(bytesBeforeCompression + bytesUncompressed) / Double(after)
    }

    public var receiveRatio: Double {
        bytesBeforeInflating == 0 ? 1 : Double(bytesAfterInflating) / Double(bytesBeforeInflating)
    }

    /// One line for the log when a connection ends.
    public var summary: String {
        func ratio(_ r: Double) -> String { String(Double(Int(r * 100)) / 100) }
        return "sent \(messagesCompressed) compressed message(s), \(bytesBeforeCompression) -> \(bytesAfterCompression) bytes "
            + "(ratio \(ratio(sendRatio))), \(messagesUncompressed) uncompressed (\(bytesUncompressed) bytes); "
            + "received \(messagesInflated) compressed, \(bytesBeforeInflating) -> \(bytesAfterInflating) bytes"
            + "; sending at level \(level) after \(levelChanges) change(s)"
    }
}
