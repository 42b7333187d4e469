/// Why a CONNECT through an HTTP proxy failed; `description` is the sentence the user reads (the dialler adds
/// which proxy).
public enum ProxyConnectError: Error, Sendable, Equatable, CustomStringConvertible {
    /// 407 and we have nothing to answer with.
    case credentialsRequired(offered: [String])
    /// 407 after we answered: wrong user or password (or a scheme we cannot finish).
    case credentialsRejected(offered: [String], tried: [String])
    /// The proxy wants Negotiate and GSSAPI could not produce a token (no ticket, unknown service principal).
    case negotiateUnavailable(offered: [String], why: String)
    /// 407 offering only schemes we do not support.
    case unsupportedSchemes(offered: [String])
    /// 403: the proxy's access rules.
    case denied(target: String, status: Int, reason: String)
    /// 502/503/504: the proxy could not reach the target.
    case upstreamFailed(target: String, status: Int, reason: String)
    case unexpectedStatus(Int, String)
    /// The authentication went on for too many rounds.
    case tooManyRounds(Int)
    /// The proxy closed the connection where it must not (in the middle of NTLM, or without answering).
    case closed(String)
    case notHTTP(String)
    case timedOut(seconds: Int64)

    public var description: String {
        func list(_ schemes: [String]) -> String { schemes.isEmpty ? "none" : schemes.joined(separator: ", ") }
        switch self {
        case .credentialsRequired(let offered):
            return "the proxy requires authentication (it offers \(list(offered))) and no credentials were given: "
                + "add --proxy-user USER (password from --proxy-password-file or ADIT_PROXY_PASSWORD)"
        case .credentialsRejected(let offered, let tried):
            return "the proxy rejected our credentials (it offers \(list(offered)); we tried \(list(tried))): "
                + "check the user name and password"
        case .negotiateUnavailable(let offered, let why):
            return "the proxy asks for Kerberos (it offers \(list(offered))) and no ticket could be used: \(why). "
                + "Run kinit (KRB5CCNAME picks the cache), and give the proxy by the host name of its HTTP/ service principal; "
                + "or add --proxy-user for another scheme it offers"
        case .unsupportedSchemes(let offered):
            return "the proxy asks for authentication schemes adit does not support (\(list(offered)))"
        case .denied(let target, let status, let reason):
            return "the proxy refused to connect to \(target): \(status) \(reason) (its access rules do not allow this destination or port)"
        case .upstreamFailed(let target, let status, let reason):
            return "the proxy could not reach \(target): \(status) \(reason)"
        case .unexpectedStatus(let status, let reason):
            return "the proxy answered CONNECT with \(status) \(reason)"
        case .tooManyRounds(let n):
            return "the proxy kept asking for authentication after \(n) rounds; giving up"
        case .closed(let when):
            return "the proxy closed the connection \(when)"
        case .notHTTP(let what):
            return "the proxy's answer is not HTTP (\(what)); is it really an HTTP proxy?"
        case .timedOut(let seconds):
            return "the proxy did not answer CONNECT within \(seconds) s"
        }
    }
}
