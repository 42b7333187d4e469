import NIOCore

/// Tuning of one tunnel session. Defaults suit a fast loopback or LAN path; see docs/protocol.md §5-6.
public struct MuxConfiguration: Sendable {
    /// Credit each stream starts with towards us. One stream's throughput is at most window ÷ round-trip time.
    public var initialWindow: UInt32 = 4 << 20
    /// Largest WebSocket message we accept.
    public var maxReceiveMessageSize: UInt32 = 1 << 20
    /// Size we aim for when packing frames into a message.
    public var sendMessageSize: Int = 64 << 10
    /// Most bytes one stream sends per scheduler turn.
    public var quantum: Int = 16 << 10
    /// Bytes read from a local connection and not yet framed, per stream, above which we stop reading it.
    public var streamReadHighWater: Int = 256 << 10
    /// Send a PING when the peer has been silent this long; give up after three silent intervals.
    public var keepaliveInterval: TimeAmount = .seconds(30)
    /// Streams open at once, each direction together; more are reset with "resource limit".
    public var maxConcurrentStreams: Int = 65_536

    public init() {}
}
