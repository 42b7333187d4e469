/// RFC 6455 §7.4 status codes we send or report.
public struct WebSocketCloseCode: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt16
    public init(rawValue: UInt16) { self.rawValue = rawValue }

    public static let normal = WebSocketCloseCode(rawValue: 1000)
    public static let goingAway = WebSocketCloseCode(rawValue: 1001)
    public static let protocolError = WebSocketCloseCode(rawValue: 1002)
    public static let unacceptableData = WebSocketCloseCode(rawValue: 1003)
    public static let noStatus = WebSocketCloseCode(rawValue: 1005)
    public static let invalidPayload = WebSocketCloseCode(rawValue: 1007)
    public static let policyViolation = WebSocketCloseCode(rawValue: 1008)
    public static let messageTooBig = WebSocketCloseCode(rawValue: 1009)
    public static let internalError = WebSocketCloseCode(rawValue: 1011)

    /// Codes a peer may put on the wire (§7.4.1, §7.4.2): 1005, 1006 and 1015 are reserved for local use.
    public var isValidOnWire: Bool {
        switch rawValue {
        case 1000...1003, 1007...1011, 3000...4999: return true
        default: return false
        }
    }

    public var description: String {
        let name: String
        switch rawValue {
        case 1000: name = "normal closure"
        case 1001: name = "going away"
        case 1002: name = "protocol error"
        case 1003: name = "unacceptable data"
        case 1005: name = "no status"
        case 1006: name = "abnormal closure"
        case 1007: name = "invalid payload"
        case 1008: name = "policy violation"
        case 1009: name = "message too big"
        case 1011: name = "internal error"
        default: name = "code"
        }
        return "\(rawValue) (\(name))"
    }
}

/// Ask the WebSocket handler to close with a given code: `channel.triggerUserOutboundEvent(...)`.
public struct WebSocketCloseRequest: Sendable {
    public var code: WebSocketCloseCode
    public var reason: String
    public init(code: WebSocketCloseCode, reason: String = "") {
        self.code = code
        self.reason = reason
    }
}
