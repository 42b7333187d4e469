import AditMux

/// One user of the users file: how they prove who they are, and what they may do.
public struct UserRecord: Sendable {
    public var name: String
    public var tokens: [TokenDigest] = []
    public var password: PasswordHash?
    /// Client-certificate identities (`CN=alice`, `DNS:host.example`, `email:a@example`, `URI:spiffe://…`), for
    /// servers that verify client certificates (`--tls-ca`).
    public var certificates: [String] = []
    /// Targets this user may reach; nil: the server's `--allow`.
    public var allow: TargetPolicy?
    /// Binds this user may ask for (`-R`); nil: the server's `--allow-reverse`.
    public var allowReverse: TargetPolicy?
    public var limits = UserLimits()

    public init(name: String) {
        self.name = name
    }

    /// Changes when any credential changes: sessions opened with the old ones end on reload.
    var credentialFingerprint: String {
        (tokens.map(\.description) + [password?.description ?? ""] + certificates).joined(separator: "|")
    }
}

/// What one user may use at once; nil falls back to the server-wide limit.
public struct UserLimits: Sendable, Equatable {
    public var sessions: Int?
    public var streams: Int?

    public init(sessions: Int? = nil, streams: Int? = nil) {
        self.sessions = sessions
        self.streams = streams
    }
}

/// Who a session is, decided before its `101`: the policy every stream of it is checked against.
public struct Identity: Sendable, CustomStringConvertible {
    public enum Method: String, Sendable {
        case token, password, certificate
        /// No users are configured: everyone is the same anonymous user under the server's rules.
        case none
    }

    public var name: String
    public var method: Method
    public var policy: TargetPolicy
    public var reversePolicy: TargetPolicy
    public var limits: UserLimits
    var credentialFingerprint: String

    public var description: String { method == .none ? "anonymous" : name }
}
