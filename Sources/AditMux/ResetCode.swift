/// Why a stream was reset, as carried by RESET (see docs/protocol.md §2). Users see `summary` in the log.
public enum ResetCode: UInt8, Sendable, Equatable, CustomStringConvertible {
    case closed = 0
    case refused = 1
    case unreachable = 2
    case timedOut = 3
    case notAllowed = 4
    case resourceLimit = 5
    case protocolError = 6
    case flowControlError = 7
    case internalError = 8

    public init(wireValue: UInt8) {
        self = ResetCode(rawValue: wireValue) ?? .internalError
    }

    public var summary: String {
        switch self {
        case .closed: return "closed by the other side"
        case .refused: return "connection refused by the target"
        case .unreachable: return "target unreachable"
        case .timedOut: return "timed out connecting to the target"
        case .notAllowed: return "not allowed by policy"
        case .resourceLimit: return "resource limit reached"
        case .protocolError: return "protocol error"
        case .flowControlError: return "flow-control error"
        case .internalError: return "internal error"
        }
    }

    public var description: String { summary }
}
