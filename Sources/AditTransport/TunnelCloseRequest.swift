/// How the session above asks its carrier to end, as an outbound user event: the carrier says it in its own
/// terms (a WebSocket closes with 1002 for a protocol error, 1000 for a normal end) without the session knowing
/// what carries it.
public struct TunnelCloseRequest: Sendable, Equatable {
    public enum Reason: Sendable, Equatable {
        case normal
        /// The peer broke the tunnel protocol.
        case protocolError
        /// This side is shutting down.
        case goingAway
    }

    public var reason: Reason
    public var detail: String

    public init(_ reason: Reason, detail: String = "") {
        self.reason = reason
        self.detail = detail
    }
}
