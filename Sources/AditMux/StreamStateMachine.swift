import NIOCore

/// The life of one stream (docs/protocol.md §4): pure, no I/O. Each event returns what the handler must do.
///
/// The opening phase and each direction's half-close are explicit states, as swift-nio-ssh models a child
/// channel: our direction (towards the peer) goes open → FIN queued behind the bytes still to frame → FIN sent;
/// the peer's direction goes open → FIN received (held until every byte before it was written) → FIN delivered
/// to the endpoint. The stream ends cleanly when FIN was sent and delivered; a RESET ends it at once.
public struct StreamStateMachine: Sendable, Equatable {
    public enum Phase: Sendable, Equatable {
        /// We sent OPEN and wait for OPEN_OK or RESET; data may already flow out.
        case awaitingOpenOK
        /// We received OPEN and are connecting to the target; data from the peer is held back.
        case accepting
        case open
        /// Reset (sent or received) or both FINs delivered: nothing more happens.
        case closed
    }

    /// Our direction, towards the peer.
    public enum OutboundHalf: Sendable, Equatable {
        case open
        /// The endpoint reached its end; FIN goes out with the last queued byte.
        case finQueued
        case finSent
    }

    /// The peer's direction, towards our endpoint.
    public enum InboundHalf: Sendable, Equatable {
        case open
        /// The peer sent FIN; it is passed on once every byte before it was written.
        case finReceived
        case finDelivered
    }

    public enum Action: Sendable, Equatable {
        case none
        /// OPEN_OK arrived: the stream is open; whoever asked for it learns the outcome.
        case opened
        /// Hand the data to the application (and then an end-of-file if `fin`).
        case deliver(fin: Bool)
        /// Drop the frame silently (it raced with a reset).
        case discard
        /// Reset the stream with this code and tell the peer.
        case reset(ResetCode, String)
        /// Our send credit went from zero to positive: the scheduler may serve this stream again.
        case resumeSending
        /// The endpoint's end: frame a FIN after what is queued.
        case queueFin
    }

    public private(set) var phase: Phase
    public private(set) var outbound: OutboundHalf = .open
    public private(set) var inbound: InboundHalf = .open
    public let kind: MuxStreamKind
    public private(set) var sendWindow: SendWindow
    public private(set) var receiveWindow: ReceiveWindow

    /// A stream we open: OPEN goes out now.
    public static func opening(peerInitialWindow: UInt32, localInitialWindow: UInt32,
                               kind: MuxStreamKind = .stream) -> StreamStateMachine {
        StreamStateMachine(phase: .awaitingOpenOK, kind: kind, peerWindow: peerInitialWindow, localWindow: localInitialWindow)
    }

    /// A stream the peer opened: we decide, then answer OPEN_OK or RESET.
    public static func accepting(peerInitialWindow: UInt32, localInitialWindow: UInt32,
                                 kind: MuxStreamKind = .stream) -> StreamStateMachine {
        StreamStateMachine(phase: .accepting, kind: kind, peerWindow: peerInitialWindow, localWindow: localInitialWindow)
    }

    private init(phase: Phase, kind: MuxStreamKind, peerWindow: UInt32, localWindow: UInt32) {
        self.phase = phase
        self.kind = kind
        self.sendWindow = SendWindow(initial: peerWindow)
        self.receiveWindow = ReceiveWindow(initial: localWindow)
    }

    public var isClosed: Bool { phase == .closed }

    /// Whether DATA may go out now (credit aside).
    public var canSend: Bool { phase != .closed && phase != .accepting && outbound != .finSent }

    /// Whether more should be read from the endpoint (its end not yet seen).
    public var wantsEndpointInput: Bool { canSend && outbound == .open }

    /// A FIN is waiting to be framed.
    public var finQueued: Bool { phase != .closed && outbound == .finQueued }

    /// The peer's FIN waits for its bytes to be written before it is passed on.
    public var finAwaitingDelivery: Bool { phase != .closed && inbound == .finReceived }

    // MARK: Events from the peer

    public mutating func receivedOpenOK() -> Action {
        switch phase {
        case .awaitingOpenOK:
            phase = .open
            return .opened
        case .closed:
            return .discard
        case .accepting, .open:
            phase = .closed
            return .reset(.protocolError, "OPEN_OK for a stream that was not waiting for one")
        }
    }

    public mutating func receivedData(length: Int, fin: Bool) -> Action {
        switch phase {
        case .closed:
            return .discard
        case .awaitingOpenOK, .accepting, .open:
            if inbound != .open {
                phase = .closed
                return .reset(.protocolError, "DATA after FIN")
            }
            if fin && kind == .datagram {
                phase = .closed
                return .reset(.protocolError, "FIN on a datagram stream")
            }
            do {
                try receiveWindow.receive(length)
            } catch {
                phase = .closed
                return .reset(.flowControlError, error.detail)
            }
            if fin { inbound = .finReceived }
            return .deliver(fin: fin)
        }
    }

    public mutating func receivedWindowUpdate(_ increment: UInt32) -> Action {
        guard phase != .closed else { return .discard }
        let wasBlocked = sendWindow.available == 0
        do {
            try sendWindow.credit(increment)
        } catch {
            phase = .closed
            return .reset(.flowControlError, error.detail)
        }
        return wasBlocked ? .resumeSending : .none
    }

    /// Returns whether the stream was still waiting for OPEN_OK (its opener learns it failed).
    @discardableResult
    public mutating func receivedReset() -> Bool {
        let wasOpening = phase == .awaitingOpenOK
        phase = .closed
        return wasOpening
    }

    // MARK: Events from our side

    /// We connected the target and send OPEN_OK.
    public mutating func accepted() {
        if phase == .accepting { phase = .open }
    }

    public mutating func sentData(length: Int, fin: Bool) {
        precondition(canSend, "sending DATA in phase \(phase) (outbound \(outbound))")
        sendWindow.consume(length)
        if fin { outbound = .finSent }
    }

    /// The endpoint reached its end of input.
    public mutating func endpointInputEnded() -> Action {
        guard phase != .closed, outbound == .open, kind == .stream else { return .none }
        outbound = .finQueued
        return .queueFin
    }

    /// The endpoint closed. After we delivered the peer's FIN that is its end of file (NIO reports a full close
    /// once both halves are shut); before, the application went away: reset.
    public mutating func endpointClosed() -> Action {
        guard phase != .closed else { return .none }
        if inbound == .finDelivered {
            if outbound == .open {
                outbound = .finQueued
                return .queueFin
            }
            return .none
        }
        phase = .closed
        return .reset(.closed, "")
    }

    /// Every byte before the peer's FIN was written: pass the FIN on.
    public mutating func deliveredFin() {
        precondition(inbound == .finReceived, "delivering a FIN that was not received")
        inbound = .finDelivered
    }

    /// The application consumed `bytes` we delivered; returns a WINDOW_UPDATE increment when one is due.
    public mutating func consumed(_ bytes: Int, at now: NIODeadline = .now(),
                                  tuning: ReceiveWindow.Tuning? = nil) -> UInt32? {
        let increment = receiveWindow.consume(bytes, at: now, tuning: tuning)
        // Credit is pointless once the peer will send nothing more.
        return (inbound != .open || phase == .closed) ? nil : increment
    }

    public mutating func sentReset() {
        phase = .closed
    }

    /// Both FINs exchanged and the peer's FIN delivered: the stream ends cleanly.
    public mutating func finishIfDone() -> Bool {
        if outbound == .finSent && inbound == .finDelivered && phase != .closed {
            phase = .closed
            return true
        }
        return false
    }
}
