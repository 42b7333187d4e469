/// The life of one session (docs/protocol.md §3) as one explicit state: pure, no I/O. `MuxHandler` asks it
/// what is allowed and tells it what happened.
public struct MuxSessionState: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// Our HELLO is out; the peer's has not come. Streams we open wait for it (they need its window).
        case awaitingHello(drainRequested: Bool)
        /// HELLO exchanged: streams open both ways.
        case active(peer: MuxHello)
        /// GOAWAY sent, received or both: the streams that exist finish, no new ones start.
        case draining(peer: MuxHello?, sent: Bool, received: Bool)
        case closed
    }

    public private(set) var state: State = .awaitingHello(drainRequested: false)

    public init() {}

    public var peerHello: MuxHello? {
        switch state {
        case .active(let peer): return peer
        case .draining(let peer, _, _): return peer
        case .awaitingHello, .closed: return nil
        }
    }

    public var isClosed: Bool { state == .closed }
    /// HELLO exchanged, not draining, not closed.
    public var isReady: Bool { if case .active = state { return true } else { return false } }
    public var hasSentGoAway: Bool {
        switch state {
        case .awaitingHello(let requested): return requested
        case .draining(_, let sent, _): return sent
        case .active, .closed: return false
        }
    }

    public var hasReceivedGoAway: Bool {
        if case .draining(_, _, let received) = state { return received }
        return false
    }

    /// Whether we may open a stream now (before the peer's HELLO it waits for it).
    public func mayOpen() -> MuxSessionError? {
        switch state {
        case .awaitingHello(let drain): return drain ? .draining : nil
        case .active: return nil
        case .draining: return .draining
        case .closed: return .sessionClosed
        }
    }

    /// Whether a stream the peer opens may be accepted (after our GOAWAY it is answered with RESET 5).
    public var acceptsStreams: Bool {
        switch state {
        case .active: return true
        case .draining(_, let sent, _): return !sent
        case .awaitingHello, .closed: return false
        }
    }

    public enum HelloOutcome: Sendable, Equatable {
        /// Streams may open; those waiting for HELLO go out now.
        case ready
        /// We had begun draining before the peer's HELLO: no stream will open.
        case draining
    }

    public mutating func receivedHello(_ hello: MuxHello) throws(MuxProtocolError) -> HelloOutcome {
        guard case .awaitingHello(let drain) = state else {
            throw MuxProtocolError(.helloMissing, "a second HELLO")
        }
        guard hello.version == MuxHello.currentVersion else {
            throw MuxProtocolError(.unsupportedVersion,
                                   "peer speaks tunnel protocol version \(hello.version), we speak \(MuxHello.currentVersion)")
        }
        guard hello.maxMessageSize >= 1024 else {
            throw MuxProtocolError(.badLength, "peer accepts messages of only \(hello.maxMessageSize) bytes")
        }
        if drain {
            state = .draining(peer: hello, sent: true, received: false)
            return .draining
        }
        state = .active(peer: hello)
        return .ready
    }

    /// Returns whether a GOAWAY must go out now (not before, not twice, not after the end).
    public mutating func beginDrain() -> Bool {
        switch state {
        case .awaitingHello(let requested):
            state = .awaitingHello(drainRequested: true)
            return !requested
        case .active(let peer):
            state = .draining(peer: peer, sent: true, received: false)
            return true
        case .draining(let peer, let sent, let received):
            state = .draining(peer: peer, sent: true, received: received)
            return !sent
        case .closed:
            return false
        }
    }

    /// Returns whether this is the first GOAWAY from the peer.
    public mutating func receivedGoAway() -> Bool {
        switch state {
        case .awaitingHello(let requested):
            state = .draining(peer: nil, sent: requested, received: true)
            return true
        case .active(let peer):
            state = .draining(peer: peer, sent: false, received: true)
            return true
        case .draining(let peer, let sent, let received):
            state = .draining(peer: peer, sent: sent, received: true)
            return !received
        case .closed:
            return false
        }
    }

    /// Draining, with no stream left: time to close.
    public func drainedWhenEmpty() -> Bool {
        if case .draining = state { return true }
        return false
    }

    /// Returns whether the session was still open (so its end must be handled once).
    public mutating func close() -> Bool {
        guard state != .closed else { return false }
        state = .closed
        return true
    }
}
