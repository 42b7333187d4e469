/// Why a stream we asked for did not open, in words a user can act on. Fronts turn it into their own protocol's
/// answer (a SOCKS reply code, an HTTP status, an exit status).
public enum MuxStreamOpenError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The peer answered RESET: the target refused, was not allowed, did not answer…
    case reset(ResetCode, reason: String)
    /// The stream could not be sent, or the session ended before an answer. `unprocessed`: the peer never
    /// acted on it (its GOAWAY named an earlier last stream), so it is safe to try again on another session.
    case session(MuxSessionError, unprocessed: Bool)
    /// The local connection went away before the answer.
    case endpointClosed
    /// The peer does not accept this kind of stream (it did not announce the feature in HELLO).
    case unsupported(String)

    /// The RESET code that best describes the failure, for fronts that map codes to their protocol.
    public var code: ResetCode {
        switch self {
        case .reset(let code, _): return code
        case .session: return .resourceLimit
        case .endpointClosed: return .closed
        case .unsupported: return .notAllowed
        }
    }

    /// Whether the open may be retried on another session without anyone noticing.
    public var isRetryable: Bool {
        if case .session(_, let unprocessed) = self { return unprocessed }
        return false
    }

    public var description: String {
        switch self {
        case .reset(let code, let reason):
            return reason.isEmpty ? code.summary : "\(code.summary) (\(reason))"
        case .session(let error, _):
            return "\(error)"
        case .endpointClosed:
            return "the local connection closed before the tunnel answered"
        case .unsupported(let what):
            return "the server does not support \(what); upgrade it"
        }
    }
}
