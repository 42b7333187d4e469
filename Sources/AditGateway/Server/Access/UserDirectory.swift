/// The users as loaded from the users file, looked up by token, certificate identity and name. A value:
/// reloading builds a new one, and sessions keep checking their streams against the identity they were given.
public struct UserDirectory: Sendable {
    public let users: [UserRecord]
    private let byToken: [TokenDigest: Int]
    private let byCertificate: [String: Int]
    private let byName: [String: Int]

    public init(users: [UserRecord]) {
        self.users = users
        var byToken: [TokenDigest: Int] = [:]
        var byCertificate: [String: Int] = [:]
        var byName: [String: Int] = [:]
        for (index, user) in users.enumerated() {
            for token in user.tokens { byToken[token] = index }
            for identity in user.certificates { byCertificate[identity] = index }
            byName[user.name] = index
        }
        self.byToken = byToken
        self.byCertificate = byCertificate
        self.byName = byName
    }

    /// A dictionary lookup on the token's SHA-256: the secret itself is never compared, and the digest reveals
    /// nothing useful to a timing attacker.
    func user(token: String) -> UserRecord? { byToken[TokenDigest(of: token)].map { users[$0] } }
    func user(certificateIdentity: String) -> UserRecord? { byCertificate[certificateIdentity].map { users[$0] } }
    func user(named name: String) -> UserRecord? { byName[name].map { users[$0] } }
}
