/// How a side uses permessage-deflate.
public enum CompressionMode: String, Sendable, CaseIterable {
    /// Never offered, always declined.
    case off
    /// Negotiated; each message is compressed unless it is small or its stream recently proved incompressible.
    case auto
    /// Negotiated; every data message is compressed.
    case always
}

/// Our side's wishes for permessage-deflate, the same for client and server.
public struct CompressionSettings: Sendable, Equatable {
    public var mode: CompressionMode = .auto
    /// zlib level, 1 (fastest) to 9 (smallest).
    public var level = 5
    /// Largest LZ77 window (9–15) either side may use; smaller windows cost less memory and compress less.
    public var windowBits = 15
    /// Ask both sides to forget their history after every message: less memory kept per connection, worse ratio.
    public var noContextTakeover = false
    /// zlib memory level for our compressor (1–9).
    public var memoryLevel = 8
    /// Messages smaller than this go uncompressed in `auto` mode.
    public var minimumSize = 128
    /// In `auto` mode, move between sending uncompressed, faster levels and `level` by the throughput each
    /// gives (`CompressionEffortChooser`); false keeps `level` for every compressible message.
    public var adaptsLevel = true

    public init() {}

    /// What a client offers: `client_max_window_bits` (without a value when we accept any window, so the
    /// server may narrow it), `server_max_window_bits` when we want a smaller one, no-context-takeover flags.
    public var clientOffer: PerMessageDeflateParameters? {
        guard mode != .off else { return nil }
        return PerMessageDeflateParameters(
            serverNoContextTakeover: noContextTakeover, clientNoContextTakeover: noContextTakeover,
            serverMaxWindowBits: windowBits < 15 ? windowBits : nil,
            clientMaxWindowBits: windowBits < 15 ? .value(windowBits) : .noValue)
    }

    /// What a server allows.
    public var serverPolicy: PerMessageDeflatePolicy? {
        guard mode != .off else { return nil }
        var policy = PerMessageDeflatePolicy()
        policy.serverMaxWindowBits = windowBits
        policy.clientMaxWindowBits = windowBits < 15 ? windowBits : nil
        policy.serverNoContextTakeover = noContextTakeover
        policy.clientNoContextTakeover = noContextTakeover
        return policy
    }
}
