/// An extension header or parameter that RFC 6455 §9 or RFC 7692 does not allow; each case names what was
/// wrong so the log line can be acted on.
public enum WebSocketExtensionError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformed(String, String)
    case unknownParameter(String)
    case duplicateParameter(String)
    case invalidValue(String, String?)
    case notOffered(String)

    public var description: String {
        switch self {
        case .malformed(let header, let why): return "malformed Sec-WebSocket-Extensions '\(header)': \(why)"
        case .unknownParameter(let name): return "permessage-deflate has no parameter '\(name)'"
        case .duplicateParameter(let name): return "permessage-deflate parameter '\(name)' appears twice"
        case .invalidValue(let name, let value):
            return "permessage-deflate parameter '\(name)' has an invalid value '\(value ?? "(none)")'"
        case .notOffered(let what): return "the server accepted \(what), which the client did not offer"
        }
    }
}
