/// Why a session operation failed, in words a user can act on.
public enum MuxSessionError: Error, Sendable, Equatable, CustomStringConvertible {
    case sessionClosed
    case draining
    case tooManyStreams(Int)
    case streamIDsExhausted
    case tunnelClosed
    case keepaliveTimeout
    case peerNotReading

    public var description: String {
        switch self {
        case .sessionClosed: return "the tunnel is closed"
        case .draining: return "the tunnel is draining and takes no new connections"
        case .tooManyStreams(let n): return "the tunnel already carries \(n) connections, its limit"
        case .streamIDsExhausted: return "the tunnel used up its stream numbers and must be reopened"
        case .tunnelClosed: return "the tunnel connection closed"
        case .keepaliveTimeout: return "the tunnel peer stopped answering keepalive pings"
        case .peerNotReading: return "the tunnel peer stopped reading what we send"
        }
    }
}
