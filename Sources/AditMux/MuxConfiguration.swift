import NIOCore

/// Tuning of one tunnel session. Defaults suit a fast loopback or LAN path; see docs/protocol.md §7-8.
public struct MuxConfiguration: Sendable {
    /// Credit each stream starts with towards us (announced in HELLO). Receive windows grow from it as the
    /// stream's share of the path's bandwidth × round trip requires (`ReceiveWindow`), up to `maxWindow`.
    public var initialWindow: UInt32 = 256 << 10
    /// The most credit one stream gets (`--window`). One stream's throughput is at most this ÷ round-trip time;
    /// a stream whose application stops reading holds at most this much. Equal to `initialWindow`: fixed windows.
    public var maxWindow: Int = 16 << 20
    /// Receive windows of all streams together, past which none grows: so a thousand busy streams cannot each
    /// take `maxWindow` of memory.
    public var windowBudget: Int = 64 << 20
    /// Largest WebSocket message we accept.
    public var maxReceiveMessageSize: UInt32 = 1 << 20
    /// Size we aim for when packing frames into a message.
    public var sendMessageSize: Int = 64 << 10
    /// Most bytes one stream sends per scheduler turn.
    public var quantum: Int = 16 << 10
    /// Bytes read from a local connection and not yet framed, per stream, above which we stop reading it.
    public var streamReadHighWater: Int = 256 << 10
    /// The same over every stream of the session: past it no endpoint is read until the scheduler has framed
    /// half of it, so a thousand bulk streams cannot each hold `streamReadHighWater` (measured: 1,000 uploads
    /// through one tunnel took the sending side to 817 MiB without it).
    public var sessionReadHighWater: Int = 16 << 20
    /// A PING goes out this often (silent or not: it keeps NAT and proxy state alive and measures the round trip).
    public var keepaliveInterval: TimeAmount = .seconds(15)
    /// A peer that sends nothing for this long after a PING is dead: the tunnel closes (and the client redials).
    /// A dead tunnel is found within interval + timeout.
    public var keepaliveTimeout: TimeAmount = .seconds(10)
    /// A stream we opened that gets neither OPEN_OK nor RESET within this long fails as "timed out" (checked at
    /// each keepalive tick).
    public var openTimeout: TimeAmount = .seconds(30)
    /// Streams open at once, each direction together; more are reset with "resource limit".
    public var maxConcurrentStreams: Int = 65_536
    /// Listeners the peer may ask us to hold at once (LISTEN), when we announce `.reverse`.
    public var maxListeners: Int = 256
    /// Datagrams read from an endpoint and not yet framed, per datagram stream, in bytes: past it new datagrams
    /// are dropped (as a congested router would), so a fast sender never blocks other streams or grows memory.
    public var datagramQueueLimit: Int = 256 << 10
    /// Bytes waiting above the tunnel socket (beyond what the kernel took) at which a peer that does not read is
    /// dropped. Data never gets there (the scheduler stops at the high-water mark); control replies could.
    public var maxUnreadBytes: Int = 4 << 20
    /// Bytes the peer may have sent that our endpoints have not taken yet, over every stream, before new streams
    /// are refused ("resource limit"). Each stream is bounded by its window already; this bounds how many
    /// windows' worth a session can pile up by opening more streams.
    public var maxBufferedBytes: Int = 256 << 20
    /// A session with no stream and no listener for this long drains (GOAWAY); nil keeps idle sessions.
    public var idleTimeout: TimeAmount?
    /// What we accept beyond the core protocol, announced in HELLO.
    public var features: MuxFeatures = []

    public init() {}
}
