/// Why proxy authentication cannot go on, in words for the log line.
public enum ProxyAuthenticationError: Error, Sendable, Equatable, CustomStringConvertible {
    case malformedChallenge(String, String)

    public var description: String {
        switch self {
        case .malformedChallenge(let scheme, let why): return "the proxy's \(scheme) challenge is malformed: \(why)"
        }
    }
}
