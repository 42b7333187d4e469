import Foundation
import NIOHTTP1

/// Credentials for the proxy.
public struct ProxyCredentials: Sendable, Equatable {
    public var user: String
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }
}

/// The CONNECT exchange with an HTTP proxy, as a pure value: it says which request to send (on this
/// connection or a new one) and judges each answer, through as many authentication rounds as the scheme needs
/// (Basic and Digest: one; NTLM: two on one connection; Negotiate: as many as GSSAPI wants), and never loops:
/// a scheme that was answered and refused ends the exchange, and so do `maxRounds` rounds.
///
/// The connection handler feeds it the response head, the start of the body (for the reason) and whether the
/// proxy will close the connection; the dialler opens a new connection when told to.
public struct ProxyConnectStateMachine: Sendable {
    public enum Action: Sendable, Equatable {
        /// Write this request on the current connection.
        case send(HTTPRequestHead)
        /// Open a new connection to the proxy and write this request on it.
        case reconnectAndSend(HTTPRequestHead)
        /// The tunnel is open: the bytes that follow are the target's.
        case established
        case fail(ProxyConnectError)
    }

    enum Scheme: Sendable, Equatable {
        case basic
        case digest(DigestAuthentication)
        case ntlmNegotiateSent
        case ntlmAuthenticateSent
        case negotiate

        var name: String {
            switch self {
            case .basic: return "Basic"
            case .digest(let d): return "Digest (\(d.algorithm.rawValue))"
            case .ntlmNegotiateSent, .ntlmAuthenticateSent: return "NTLM"
            case .negotiate: return "Negotiate"
            }
        }
    }

    public let target: String
    public let credentials: ProxyCredentials?
    public let extraHeaders: [(String, String)]
    public let maxRounds: Int
    /// Makes Negotiate tokens (GSSAPI); nil when Negotiate is not available.
    public let negotiator: (any NegotiateTokenSource)?
    private var scheme: Scheme?
    private var tried: [String] = []
    private var rounds = 0
    /// Why Negotiate could not start (no ticket, unknown principal), for the failure sentence.
    private var negotiateFailure: String?
    /// What to send on a fresh connection when the proxy closed the previous one.
    private var lastRequest: HTTPRequestHead?

    public init(target: String, credentials: ProxyCredentials?, extraHeaders: [(String, String)] = [],
                negotiator: (any NegotiateTokenSource)? = nil, maxRounds: Int = 6) {
        self.target = target
        self.credentials = credentials
        self.extraHeaders = extraHeaders
        self.negotiator = negotiator
        self.maxRounds = maxRounds
    }

    /// The first request on a connection: the plain CONNECT, or, after the proxy closed the last connection,
    /// the request that was due.
    public mutating func connectionOpened() -> Action {
        if let pending = lastRequest { return .send(pending) }
        return .send(request(authorization: nil))
    }

    /// A complete answer (head, and the body drained). `bodyStart` is the first bytes of the body (for the
    /// reason of a failure); `willClose` says the proxy closes the connection after it.
    public mutating func receivedResponse(_ head: HTTPResponseHead, bodyStart: String, willClose: Bool) -> Action {
        let status = Int(head.status.code)
        switch status {
        case 200..<300:
            return .established
        case 407:
            return authenticationRequired(head, header: "Proxy-Authenticate", willClose: willClose)
        case 401:
            // tinyproxy answers a wrong password with 401 and WWW-Authenticate rather than 407.
            if !tried.isEmpty {
                let offered = Self.displayNames(AuthenticationChallenge.parse(head.headers["WWW-Authenticate"]))
                return .fail(.credentialsRejected(offered: offered, tried: tried))
            }
            return authenticationRequired(head, header: "WWW-Authenticate", willClose: willClose)
        case 403:
            return .fail(.denied(target: target, status: status, reason: Self.reason(head, bodyStart)))
        case 502, 503, 504:
            return .fail(.upstreamFailed(target: target, status: status, reason: Self.reason(head, bodyStart)))
        default:
            return .fail(.unexpectedStatus(status, Self.reason(head, bodyStart)))
        }
    }

    /// The proxy closed the connection before answering the request we sent.
    public mutating func connectionClosedEarly() -> Action {
        switch scheme {
        case .ntlmAuthenticateSent, .ntlmNegotiateSent:
            return .fail(.closed("in the middle of NTLM authentication (NTLM needs one kept-alive connection)"))
        default:
            rounds += 1
            guard rounds <= maxRounds, let pending = lastRequest else {
                return .fail(.closed("without answering CONNECT"))
            }
            return .reconnectAndSend(pending)
        }
    }

    // MARK: 407

    private mutating func authenticationRequired(_ head: HTTPResponseHead, header: String, willClose: Bool) -> Action {
        rounds += 1
        let challenges = AuthenticationChallenge.parse(head.headers[header])
        let offered = Self.displayNames(challenges)
        guard rounds <= maxRounds else { return .fail(.tooManyRounds(maxRounds)) }

        // Continue a scheme that is under way.
        switch scheme {
        case .ntlmNegotiateSent:
            guard let token = challenges.first(where: { $0.scheme == "ntlm" })?.token,
                let bytes = Data(base64Encoded: token), let credentials
            else { return .fail(.credentialsRejected(offered: offered, tried: tried)) }
            guard !willClose else {
                return .fail(.closed("after its NTLM challenge (NTLM needs one kept-alive connection)"))
            }
            let challenge: NTLM.Challenge
            do {
                challenge = try NTLM.parseChallenge(Array(bytes))
            } catch {
                return .fail(.notHTTP("\(error)"))
            }
            scheme = .ntlmAuthenticateSent
            let answer = NTLM.authenticateMessage(challenge: challenge, user: credentials.user,
                                                  password: credentials.password)
            return send(authorization: "NTLM " + Data(answer).base64EncodedString(), willClose: false)
        case .negotiate:
            if let token = challenges.first(where: { $0.scheme == "negotiate" })?.token, let negotiator,
                let next = try? negotiator.nextToken(serverToken: Data(base64Encoded: token) ?? Data()), !next.isEmpty
            {
                return send(authorization: "Negotiate " + next.base64EncodedString(), willClose: willClose)
            }
            // Negotiate did not work out: fall through to the next scheme below, if there is one.
        case .digest(let previous):
            if let fresh = challenges.compactMap(DigestAuthentication.init(challenge:)).first, fresh.stale,
                fresh.nonce != previous.nonce, let credentials
            {
                // Only the nonce expired: the credentials were fine.
                var digest = fresh
                scheme = .digest(digest)
                let value = digest.authorization(user: credentials.user, password: credentials.password, authority: target)
                scheme = .digest(digest)
                return send(authorization: value, willClose: willClose)
            }
            return .fail(.credentialsRejected(offered: offered, tried: tried))
        case .basic, .ntlmAuthenticateSent:
            return .fail(.credentialsRejected(offered: offered, tried: tried))
        case nil:
            break
        }
        return chooseScheme(challenges, offered: offered, willClose: willClose)
    }

    /// The strongest offered scheme we can answer: Negotiate (with a ticket), NTLM, Digest (SHA-256 before
    /// MD5), Basic.
    private mutating func chooseScheme(_ challenges: [AuthenticationChallenge], offered: [String], willClose: Bool) -> Action {
        let schemes = Set(challenges.map(\.scheme))
        if schemes.contains("negotiate"), !tried.contains("Negotiate"), let negotiator {
            do {
                let token = try negotiator.nextToken(serverToken: Data())
                if !token.isEmpty {
                    scheme = .negotiate
                    tried.append("Negotiate")
                    return send(authorization: "Negotiate " + token.base64EncodedString(), willClose: willClose)
                }
            } catch {
                negotiateFailure = "\(error)"
            }
        }
        guard let credentials else {
            if let negotiateFailure, schemes.contains("negotiate") {
                return .fail(.negotiateUnavailable(offered: offered, why: negotiateFailure))
            }
            let supported = schemes.intersection(["basic", "digest", "ntlm", "negotiate"])
            return .fail(supported.isEmpty ? .unsupportedSchemes(offered: offered) : .credentialsRequired(offered: offered))
        }
        if schemes.contains("ntlm"), !tried.contains("NTLM") {
            scheme = .ntlmNegotiateSent
            tried.append("NTLM")
            return send(authorization: "NTLM " + Data(NTLM.negotiateMessage()).base64EncodedString(), willClose: willClose)
        }
        let digests = challenges.compactMap(DigestAuthentication.init(challenge:))
            .sorted { $0.algorithm.strength > $1.algorithm.strength }
        if var digest = digests.first, !tried.contains(where: { $0.hasPrefix("Digest") }) {
            let value = digest.authorization(user: credentials.user, password: credentials.password, authority: target)
            scheme = .digest(digest)
            tried.append(Scheme.digest(digest).name)
            return send(authorization: value, willClose: willClose)
        }
        if schemes.contains("basic"), !tried.contains("Basic") {
            scheme = .basic
            tried.append("Basic")
            let token = Data("\(credentials.user):\(credentials.password)".utf8).base64EncodedString()
            return send(authorization: "Basic " + token, willClose: willClose)
        }
        if tried.isEmpty { return .fail(.unsupportedSchemes(offered: offered)) }
        return .fail(.credentialsRejected(offered: offered, tried: tried))
    }

    private mutating func send(authorization: String, willClose: Bool) -> Action {
        let head = request(authorization: authorization)
        lastRequest = head
        return willClose ? .reconnectAndSend(head) : .send(head)
    }

    private func request(authorization: String?) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: target)
        headers.add(name: "Proxy-Connection", value: "keep-alive")
        headers.add(name: "User-Agent", value: "adit")
        for (name, value) in extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        if let authorization { headers.replaceOrAdd(name: "Proxy-Authorization", value: authorization) }
        return HTTPRequestHead(version: .http1_1, method: .CONNECT, uri: target, headers: headers)
    }

    static func displayNames(_ challenges: [AuthenticationChallenge]) -> [String] {
        var seen: [String] = []
        for c in challenges {
            let name: String
            switch c.scheme {
            case "ntlm": name = "NTLM"
            case "digest": name = "Digest" + (c.parameters["algorithm"].map { " (\($0))" } ?? "")
            default: name = c.scheme.prefix(1).uppercased() + c.scheme.dropFirst()
            }
            if !seen.contains(name) { seen.append(name) }
        }
        return seen
    }

    /// The proxy's own reason: squid's `X-Squid-Error` (with the errno spelled out), else the status text and
    /// the first line of a plain-text body.
    static func reason(_ head: HTTPResponseHead, _ body: String) -> String {
        var reason = head.status.reasonPhrase
        if let squid = head.headers["X-Squid-Error"].first {
            let parts = squid.split(separator: " ")
            if parts.count == 2, let code = Int32(parts[1]), code > 0 {
                reason += " (\(parts[0]): \(String(cString: strerror(code))))"
            } else {
                reason += " (\(squid))"
            }
        } else if head.headers["Content-Type"].first?.lowercased().hasPrefix("text/plain") == true,
            let line = body.split(whereSeparator: \.isNewline).first
        {
            reason += " (\(line.prefix(200)))"
        }
        return reason
    }
}

