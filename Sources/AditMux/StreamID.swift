/// Identifies one stream of a tunnel. The client opens odd IDs and the server even ones, so both sides can open
/// streams without coordination (reverse forwarding needs the server to open them).
public struct StreamID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public let rawValue: UInt32

    /// Stream 0 addresses the session itself (PING, GOAWAY, HELLO).
    public static let session = StreamID(0)
    public static let maxRawValue: UInt32 = 0x7FFF_FFFF

    public init(_ rawValue: UInt32) {
        self.rawValue = rawValue & StreamID.maxRawValue
    }

    public var isSession: Bool { rawValue == 0 }

    /// Which side of the tunnel opened a stream with this ID.
    public var opener: MuxRole {
        rawValue % 2 == 1 ? .client : .server
    }

    public var description: String { "\(rawValue)" }

    public static func < (lhs: StreamID, rhs: StreamID) -> Bool { lhs.rawValue < rhs.rawValue }
}

/// The side of the tunnel a session plays; decides the parity of the stream IDs it opens.
public enum MuxRole: Sendable, Equatable, CustomStringConvertible {
    case client
    case server

    public var firstStreamID: StreamID { self == .client ? StreamID(1) : StreamID(2) }

    public var description: String { self == .client ? "client" : "server" }
}
