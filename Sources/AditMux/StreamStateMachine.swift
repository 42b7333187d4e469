/// The life of one stream (docs/protocol.md §4): pure, no I/O. Each event returns what the handler must do.
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

    public enum Action: Sendable, Equatable {
        case none
        /// Hand the data to the application (and then an end-of-file if `fin`).
        case deliver(fin: Bool)
        /// Drop the frame silently (it raced with a reset).
        case discard
        /// Reset the stream with this code and tell the peer.
        case reset(ResetCode, String)
        /// Our send credit went from zero to positive: the scheduler may serve this stream again.
        case resumeSending
    }

    public private(set) var phase: Phase
    /// We sent FIN.
    public private(set) var sentFin = false
    /// The peer sent FIN.
    public private(set) var receivedFin = false
    public private(set) var sendWindow: SendWindow
    public private(set) var receiveWindow: ReceiveWindow

    /// A stream we open: OPEN goes out now.
    public static func opening(peerInitialWindow: UInt32, localInitialWindow: UInt32) -> StreamStateMachine {
        StreamStateMachine(phase: .awaitingOpenOK, peerWindow: peerInitialWindow, localWindow: localInitialWindow)
    }

    /// A stream the peer opened: we decide, then answer OPEN_OK or RESET.
    public static func accepting(peerInitialWindow: UInt32, localInitialWindow: UInt32) -> StreamStateMachine {
        StreamStateMachine(phase: .accepting, peerWindow: peerInitialWindow, localWindow: localInitialWindow)
    }

    private init(phase: Phase, peerWindow: UInt32, localWindow: UInt32) {
        self.phase = phase
        self.sendWindow = SendWindow(initial: peerWindow)
        self.receiveWindow = ReceiveWindow(initial: localWindow)
    }

    public var isClosed: Bool { phase == .closed }

    /// Whether DATA may go out now (credit aside).
    public var canSend: Bool { phase != .closed && phase != .accepting && !sentFin }

    // MARK: Events from the peer

    public mutating func receivedOpenOK() -> Action {
        switch phase {
        case .awaitingOpenOK:
            phase = .open
            return .none
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
            if receivedFin {
                phase = .closed
                return .reset(.protocolError, "DATA after FIN")
            }
            do {
                try receiveWindow.receive(length)
            } catch {
                phase = .closed
                return .reset(.flowControlError, error.detail)
            }
            if fin { receivedFin = true }
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

    public mutating func receivedReset() {
        phase = .closed
    }

    // MARK: Events from our side

    /// We connected the target and send OPEN_OK.
    public mutating func accepted() {
        if phase == .accepting { phase = .open }
    }

    public mutating func sentData(length: Int, fin: Bool) {
        precondition(canSend, "sending DATA in phase \(phase) (sentFin: \(sentFin))")
        sendWindow.consume(length)
        if fin { sentFin = true }
    }

    /// The application consumed `bytes` we delivered; returns a WINDOW_UPDATE increment when one is due.
    public mutating func consumed(_ bytes: Int) -> UInt32? {
        let increment = receiveWindow.consume(bytes)
        // Credit is pointless once the peer will send nothing more.
        return (receivedFin || phase == .closed) ? nil : increment
    }

    public mutating func sentReset() {
        phase = .closed
    }

    /// Both FINs exchanged and the peer's FIN delivered: the stream ends cleanly.
    public mutating func finishIfDone() -> Bool {
        if sentFin && receivedFin && phase != .closed {
            phase = .closed
            return true
        }
        return false
    }
}
