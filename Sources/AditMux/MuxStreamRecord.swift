import NIOCore

/// What one stream carried, handed to the delegate when an established stream ends: the server's access log
/// line and per-stream statistics are made from it. Streams refused before they were established have none
/// (their refusal is reported where it is decided).
public struct MuxStreamRecord: Sendable {
    /// How the stream ended.
    public enum End: Sendable, Equatable, CustomStringConvertible {
        /// Both sides finished: every byte was delivered.
        case finished
        /// The peer reset it.
        case resetByPeer(ResetCode, reason: String)
        /// We reset it (our endpoint failed, a limit, a protocol error).
        case resetByUs(ResetCode, reason: String)
        /// The tunnel ended with the stream open.
        case tunnelClosed

        public var description: String {
            switch self {
            case .finished: return "finished"
            case .resetByPeer(let code, _): return code == .closed ? "closed by peer" : "reset by peer (\(code.summary))"
            case .resetByUs(let code, _): return code == .closed ? "closed" : "reset (\(code.summary))"
            case .tunnelClosed: return "tunnel closed"
            }
        }
    }

    public var id: StreamID
    public var request: MuxOpenRequest
    /// Payload bytes received from the peer (written to the endpoint) and sent to it.
    public var bytesFromPeer: Int
    public var bytesToPeer: Int
    /// From the OPEN (sent or received) to the end.
    public var duration: TimeAmount
    public var end: End
}
