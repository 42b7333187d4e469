import NIOCore

/// The client side of SOCKS5 (RFC 1928) with username/password authentication (RFC 1929), as a pure value:
/// bytes from the proxy in, bytes to send and the outcome out.
public struct SOCKS5StateMachine: Sendable {
    /// Where to connect: a name the proxy resolves (socks5h) or an address resolved here (socks5).
    public enum Destination: Sendable, Equatable {
        case name(String, port: Int)
        case ipv4([UInt8], port: Int)
        case ipv6([UInt8], port: Int)
    }

    public enum Action: Sendable, Equatable {
        case send([UInt8])
        /// Waiting for more bytes from the proxy.
        case wait
        /// Connected; these bytes arrived after the reply and belong to the target.
        case established(leftover: [UInt8])
        case fail(SOCKS5Error)
    }

    enum State: Sendable {
        case greeting, authenticating, connecting, done
    }

    private let destination: Destination
    private let credentials: ProxyCredentials?
    private var state = State.greeting
    private var received: [UInt8] = []

    public init(destination: Destination, credentials: ProxyCredentials?) {
        self.destination = destination
        self.credentials = credentials
    }

    /// The greeting: no authentication, and username/password when we have credentials.
    public mutating func start() -> Action {
        state = .greeting
        return .send(credentials == nil ? [5, 1, 0] : [5, 2, 0, 2])
    }

    public mutating func receive(_ bytes: [UInt8]) -> Action {
        received += bytes
        switch state {
        case .greeting:
            guard received.count >= 2 else { return .wait }
            guard received[0] == 5 else { return .fail(.notSOCKS5) }
            let method = received[1]
            received.removeFirst(2)
            switch method {
            case 0:
                return connect()
            case 2:
                guard let credentials else { return .fail(.credentialsRequired) }
                let user = Array(credentials.user.utf8), password = Array(credentials.password.utf8)
                guard user.count <= 255, password.count <= 255 else { return .fail(.credentialsTooLong) }
                state = .authenticating
                return .send([1, UInt8(user.count)] + user + [UInt8(password.count)] + password)
            case 0xFF:
                return .fail(credentials == nil ? .credentialsRequired : .noAcceptableMethod)
            default:
                return .fail(.noAcceptableMethod)
            }
        case .authenticating:
            guard received.count >= 2 else { return .wait }
            let status = received[1]
            received.removeFirst(2)
            guard status == 0 else { return .fail(.credentialsRejected) }
            return connect()
        case .connecting:
            guard received.count >= 5 else { return .wait }
            guard received[0] == 5 else { return .fail(.notSOCKS5) }
            let reply = received[1]
            let length: Int
            switch received[3] {
            case 1: length = 4 + 4 + 2
            case 3: length = 4 + 1 + Int(received[4]) + 2
            case 4: length = 4 + 16 + 2
            default: return .fail(.notSOCKS5)
            }
            guard received.count >= length else { return .wait }
            guard reply == 0 else { return .fail(.connectFailed(reply)) }
            state = .done
            let leftover = Array(received[length...])
            received = []
            return .established(leftover: leftover)
        case .done:
            return .wait
        }
    }

    private mutating func connect() -> Action {
        state = .connecting
        var request: [UInt8] = [5, 1, 0]
        let port: Int
        switch destination {
        case .name(let name, let p):
            let bytes = Array(name.utf8)
            guard bytes.count <= 255 else { return .fail(.nameTooLong) }
            request += [3, UInt8(bytes.count)] + bytes
            port = p
        case .ipv4(let address, let p):
            request += [1] + address
            port = p
        case .ipv6(let address, let p):
            request += [4] + address
            port = p
        }
        request += [UInt8(port >> 8), UInt8(port & 0xFF)]
        return .send(request)
    }
}

/// Why a SOCKS5 proxy did not connect us.
public enum SOCKS5Error: Error, Sendable, Equatable, CustomStringConvertible {
    case notSOCKS5
    case credentialsRequired
    case credentialsRejected
    case credentialsTooLong
    case noAcceptableMethod
    case nameTooLong
    case connectFailed(UInt8)

    public var description: String {
        switch self {
        case .notSOCKS5: return "the proxy's answer is not SOCKS5; is it a SOCKS5 proxy?"
        case .credentialsRequired:
            return "the SOCKS5 proxy requires a username and password: add --proxy-user USER (password from --proxy-password-file or ADIT_PROXY_PASSWORD)"
        case .credentialsRejected: return "the SOCKS5 proxy rejected our username or password"
        case .credentialsTooLong: return "SOCKS5 allows at most 255 bytes of username and of password"
        case .noAcceptableMethod: return "the SOCKS5 proxy accepts none of our authentication methods (none, username/password)"
        case .nameTooLong: return "the server's host name is longer than SOCKS5 allows (255 bytes)"
        case .connectFailed(let code):
            let reasons: [UInt8: String] = [
                1: "general failure", 2: "not allowed by its rules", 3: "network unreachable", 4: "host unreachable",
                5: "connection refused", 6: "TTL expired", 7: "command not supported", 8: "address type not supported",
            ]
            return "the SOCKS5 proxy could not connect: \(reasons[code] ?? "error \(code)")"
        }
    }
}
