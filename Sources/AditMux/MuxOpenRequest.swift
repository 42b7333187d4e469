/// What a stream carries: a byte stream (TCP) or datagrams (UDP), one per DATA frame.
public enum MuxStreamKind: Sendable, Equatable, CustomStringConvertible {
    case stream
    case datagram

    public var description: String { self == .stream ? "tcp" : "udp" }
}

/// What an OPEN asks for (docs/protocol.md §2): a connection to `target`, or — when `listener` is set — a
/// connection that arrived on a listener the receiver asked for with LISTEN, `target` then being where it came
/// from.
public struct MuxOpenRequest: Hashable, Sendable, CustomStringConvertible {
    public var target: MuxTarget
    public var kind: MuxStreamKind
    /// The LISTEN stream whose listener accepted this connection (reverse forwarding), nil for a forward open.
    public var listener: StreamID?

    public init(target: MuxTarget, kind: MuxStreamKind = .stream, listener: StreamID? = nil) {
        self.target = target
        self.kind = kind
        self.listener = listener
    }

    public var description: String {
        let what = kind == .datagram ? "\(target)/udp" : "\(target)"
        return listener.map { "reverse from \(what) on listener \($0)" } ?? what
    }
}

/// What a LISTEN asks for: that the receiver listen on `bind` and open a stream back for every connection
/// (or, for datagrams, every new sender) that arrives there.
public struct MuxListenRequest: Hashable, Sendable, CustomStringConvertible {
    /// Port 0 lets the receiver pick; OPEN_OK names the address actually bound.
    public var bind: MuxTarget
    public var kind: MuxStreamKind

    public init(bind: MuxTarget, kind: MuxStreamKind = .stream) {
        self.bind = bind
        self.kind = kind
    }

    public var description: String { kind == .datagram ? "\(bind)/udp" : "\(bind)" }
}

/// The optional parts of the protocol a side accepts, announced in HELLO. A side sends LISTEN or a datagram
/// OPEN only to a peer that announced it, so an older peer gets a clear local error instead of a silent one.
public struct MuxFeatures: OptionSet, Hashable, Sendable {
    public let rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// Accepts LISTEN: listens on the sender's behalf and opens reverse streams back (`-R`).
    public static let reverse = MuxFeatures(rawValue: 1 << 0)
    /// Accepts datagram streams (OPEN with the DATAGRAM flag): UDP.
    public static let datagrams = MuxFeatures(rawValue: 1 << 1)
}
