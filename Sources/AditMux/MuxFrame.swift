import NIOCore

/// One frame of the tunnel protocol (docs/protocol.md §2). DATA payloads are slices of the received message,
/// never copies.
public enum MuxFrame: Equatable, Sendable {
    case data(StreamID, ByteBuffer, fin: Bool)
    case open(StreamID, MuxOpenRequest)
    /// `bound` answers a LISTEN with the address actually listened on; nil for an ordinary OPEN.
    case openOK(StreamID, bound: MuxTarget?)
    case reset(StreamID, ResetCode, reason: String)
    case windowUpdate(StreamID, increment: UInt32)
    case ping(UInt64)
    case pong(UInt64)
    case goAway(lastStreamID: StreamID, code: ResetCode, reason: String)
    case hello(MuxHello)
    case listen(StreamID, MuxListenRequest)
    /// A frame type this version does not know; ignored on receipt so later versions can add frames.
    case unknown(type: UInt8, StreamID)

    public enum FrameType: UInt8, Sendable {
        case data = 0x0
        case open = 0x1
        case openOK = 0x2
        case reset = 0x3
        case windowUpdate = 0x4
        case ping = 0x5
        case pong = 0x6
        case goAway = 0x7
        case hello = 0x8
        case listen = 0x9
    }

    public static let headerSize = 9
    /// The 24-bit length field bounds every payload.
    public static let maxPayloadSize = (1 << 24) - 1
    /// DATA: the sender will send no more on this stream.
    public static let finFlag: UInt8 = 0x1
    /// OPEN, LISTEN: the stream (or the listener's streams) carry datagrams.
    public static let datagramFlag: UInt8 = 0x2
    /// OPEN: a connection accepted on a listener of the receiver's LISTEN; the payload starts with its ID.
    public static let reverseFlag: UInt8 = 0x4
    /// Reasons in RESET and GOAWAY are cut to this many bytes.
    public static let maxReasonBytes = 256

    public var streamID: StreamID {
        switch self {
        case .data(let id, _, _), .open(let id, _), .openOK(let id, _), .reset(let id, _, _),
            .windowUpdate(let id, _), .listen(let id, _), .unknown(_, let id):
            return id
        case .ping, .pong, .goAway, .hello:
            return .session
        }
    }
}

/// The session parameters each side announces first (docs/protocol.md §3).
public struct MuxHello: Equatable, Sendable {
    public static let currentVersion: UInt8 = 1

    public var version: UInt8
    /// The credit every stream starts with in the direction towards the announcer.
    public var initialWindow: UInt32
    /// The largest WebSocket message the announcer accepts.
    public var maxMessageSize: UInt32
    /// What the announcer accepts beyond the core protocol (absent on the wire = none).
    public var features: MuxFeatures

    public init(version: UInt8 = MuxHello.currentVersion, initialWindow: UInt32, maxMessageSize: UInt32,
                features: MuxFeatures = []) {
        self.version = version
        self.initialWindow = initialWindow
        self.maxMessageSize = maxMessageSize
        self.features = features
    }
}
