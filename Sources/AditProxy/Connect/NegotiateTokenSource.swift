import Foundation

/// Produces SPNEGO/Kerberos tokens for `Proxy-Authorization: Negotiate` (the system GSSAPI in production).
public protocol NegotiateTokenSource: Sendable {
    /// The next token for the proxy, given its last one (empty at first). Throws when there is no ticket or
    /// the exchange failed.
    func nextToken(serverToken: Data) throws -> Data
}
