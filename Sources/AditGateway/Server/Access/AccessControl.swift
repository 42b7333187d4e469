import AditMux
import AditWebSocket
import Foundation
import NIOHTTP1

/// Who may open a tunnel, decided from the upgrade request before its `101`, pure: the handshake's admission
/// carries the decision out (a slow password check goes off the event loop first).
public struct AccessControl: Sendable {
    /// Nil: no users are configured, and everyone is the anonymous user under the server's rules.
    public var directory: UserDirectory?
    public var defaultPolicy: TargetPolicy
    public var defaultReversePolicy: TargetPolicy
    /// `--allow-origin`: the web pages whose browsers may connect; nil lets pages in only when no users are
    /// configured.
    public var allowedOrigins: [String]?

    public init(directory: UserDirectory?, defaultPolicy: TargetPolicy, defaultReversePolicy: TargetPolicy,
                allowedOrigins: [String]? = nil) {
        self.directory = directory
        self.defaultPolicy = defaultPolicy
        self.defaultReversePolicy = defaultReversePolicy
        self.allowedOrigins = allowedOrigins
    }

    public enum Decision: Sendable {
        case admit(Identity)
        /// The request names a user with a password: check it (slowly, off the event loop), then admit or 401.
        case checkPassword(UserRecord, password: String)
        /// 401 (with challenges) or 403, and why: one sentence for the client, and the log.
        case refuse(Refusal)
    }

    public struct Refusal: Sendable, Equatable {
        public var status: HTTPResponseStatus
        public var reason: String

        /// 401 asks for credentials: Bearer for tokens, Basic for passwords.
        public var headers: [(String, String)] {
            status == .unauthorized
                ? [("WWW-Authenticate", "Bearer realm=\"adit\""), ("WWW-Authenticate", "Basic realm=\"adit\", charset=\"UTF-8\"")]
                : []
        }

        public static func == (a: Refusal, b: Refusal) -> Bool { a.status == b.status && a.reason == b.reason }
    }

    /// - Parameter certificateIdentities: of the client certificate the TLS layer verified (`CN=…`, `DNS:…`, …).
    public func decide(_ head: HTTPRequestHead, certificateIdentities: [String] = []) -> Decision {
        if let origin = head.headers["Origin"].first {
            if let allowedOrigins {
                guard allowedOrigins.contains(where: { $0.caseInsensitiveCompare(origin) == .orderedSame }) else {
                    return .refuse(Refusal(status: .forbidden, reason: "web pages from \(origin) may not connect (not in --allow-origin)"))
                }
            } else if directory != nil {
                return .refuse(Refusal(status: .forbidden,
                                       reason: "web pages (Origin \(origin)) may not connect: the server lists none with --allow-origin"))
            }
        }
        guard let directory else {
            return .admit(Identity(name: "anonymous", method: .none, policy: defaultPolicy,
                                   reversePolicy: defaultReversePolicy, limits: UserLimits(), credentialFingerprint: ""))
        }
        for identity in certificateIdentities {
            if let user = directory.user(certificateIdentity: identity) { return .admit(self.identity(user, .certificate)) }
        }
        let authorization = head.headers["Authorization"].first?.trimmingCharacters(in: .whitespaces) ?? ""
        let scheme = authorization.prefix { $0 != " " }.lowercased()
        let credentials = authorization.dropFirst(scheme.count).trimmingCharacters(in: .whitespaces)
        if scheme == "bearer" {
            guard let user = directory.user(token: credentials) else {
                return .refuse(Refusal(status: .unauthorized, reason: "the token is not one of this server's"))
            }
            return .admit(identity(user, .token))
        }
        let subprotocolToken = WebSocketHandshake.tokens(head.headers, "Sec-WebSocket-Protocol")
            .first { $0.hasPrefix(WebSocketHandshake.bearerSubprotocolPrefix) }
            .map { String($0.dropFirst(WebSocketHandshake.bearerSubprotocolPrefix.count)) }
        if let token = subprotocolToken {
            guard let user = directory.user(token: token) else {
                return .refuse(Refusal(status: .unauthorized, reason: "the token is not one of this server's"))
            }
            return .admit(identity(user, .token))
        }
        if scheme == "basic" {
            guard let decoded = Data(base64Encoded: credentials).flatMap({ String(data: $0, encoding: .utf8) }),
                let colon = decoded.firstIndex(of: ":")
            else {
                return .refuse(Refusal(status: .unauthorized, reason: "the Basic credentials are not user:password in base64"))
            }
            let name = String(decoded[..<colon])
            let password = String(decoded[decoded.index(after: colon)...])
            // The same answer for an unknown user and a wrong password: the 401 does not tell which names exist.
            guard let user = directory.user(named: name), user.password != nil else {
                return .checkPassword(UserRecord.nobody, password: password)
            }
            return .checkPassword(user, password: password)
        }
        if certificateIdentities.isEmpty {
            return .refuse(Refusal(status: .unauthorized, reason: "this server needs credentials (a token, or a user and password)"))
        }
        return .refuse(Refusal(status: .unauthorized,
                               reason: "the client certificate (\(certificateIdentities.joined(separator: ", "))) is not one of this server's users"))
    }

    /// After a password check: the identity, or 401.
    public func passwordChecked(_ user: UserRecord, ok: Bool) -> Decision {
        ok && user.password != nil && !user.name.isEmpty
            ? .admit(identity(user, .password))
            : .refuse(Refusal(status: .unauthorized, reason: "the user name or password is wrong"))
    }

    public func identity(_ user: UserRecord, _ method: Identity.Method) -> Identity {
        Identity(name: user.name, method: method, policy: user.allow ?? defaultPolicy,
                 reversePolicy: user.allowReverse ?? defaultReversePolicy, limits: user.limits,
                 credentialFingerprint: user.credentialFingerprint)
    }
}

extension UserRecord {
    /// Stands in for an unknown user name, so its check costs as much as a real one (a fixed hash that no
    /// password matches is verified against): timing does not tell which names exist.
    static let nobody: UserRecord = {
        var user = UserRecord(name: "")
        user.password = try? PasswordHash.make(password: TokenDigest.makeToken())
        return user
    }()
}
