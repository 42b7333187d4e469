/// The closing handshake of RFC 6455 §7, pure: each event says what to send and whether to drop the TCP
/// connection.
public struct WebSocketCloseStateMachine: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        case open
        /// We sent a close frame and wait for the peer's.
        case closeSent
        /// Both close frames were exchanged (or the connection is gone).
        case closed
    }

    public enum Action: Sendable, Equatable {
        case none
        /// Send a close frame with this code, then wait for the peer's answer (with a timeout).
        case sendCloseAndWait(WebSocketCloseCode, String)
        /// Send a close frame answering the peer, then close the connection.
        case sendCloseAndDisconnect(WebSocketCloseCode)
        /// Close the connection now.
        case disconnect
    }

    public private(set) var state: State = .open
    /// The code the peer sent, for the log.
    public private(set) var peerCode: WebSocketCloseCode?

    public init() {}

    public var isOpen: Bool { state == .open }

    /// We want to close (application close, shutdown, or an error of the peer we are reporting).
    public mutating func closeRequested(code: WebSocketCloseCode, reason: String = "") -> Action {
        switch state {
        case .open:
            state = .closeSent
            return .sendCloseAndWait(code, reason)
        case .closeSent, .closed:
            return .none
        }
    }

    /// A close frame arrived.
    public mutating func receivedClose(code: WebSocketCloseCode?) -> Action {
        peerCode = code ?? .noStatus
        switch state {
        case .open:
            state = .closed
            // Echo the peer's code (§5.5.1); a close without a code is answered with 1000.
            let echo = (code.map { $0.isValidOnWire ? $0 : .protocolError }) ?? .normal
            return .sendCloseAndDisconnect(echo)
        case .closeSent:
            state = .closed
            return .disconnect
        case .closed:
            return .none
        }
    }

    /// The peer did not answer our close frame in time.
    public mutating func closeTimedOut() -> Action {
        guard state == .closeSent else { return .none }
        state = .closed
        return .disconnect
    }

    public mutating func connectionLost() {
        state = .closed
    }
}
