import AditProxy
import Foundation

/// The proxy a client goes through, with what it needs to get past it.
public struct ProxyRoute: Sendable {
    public var url: ProxyURL
    public var credentials: ProxyCredentials?
    /// Extra headers for the CONNECT request (`--proxy-header`).
    public var connectHeaders: [(String, String)]
    /// Why this proxy (for the log): "--proxy", "from HTTPS_PROXY", ….
    public var reason: String

    public init(url: ProxyURL, credentials: ProxyCredentials?, connectHeaders: [(String, String)] = [], reason: String) {
        self.url = url
        self.credentials = credentials
        self.connectHeaders = connectHeaders
        self.reason = reason
    }
}

/// A failure on the way through the proxy, with the proxy named.
struct ProxyDialError: Error, CustomStringConvertible {
    var proxy: ProxyURL
    var underlying: any Error

    var description: String { "through the proxy \(proxy): \(underlying)" }
}

extension ProxyRoute {
    /// What the client options and the environment say about the proxy: nil for a direct connection, with
    /// the reason either way (for the log). The password comes from `passwordFile`, `ADIT_PROXY_PASSWORD`, or
    /// (discouraged, visible in `ps`) `--proxy-user USER:PASS` or the proxy URL.
    public static func resolve(proxy: String?, noProxy: Bool, user: String?, passwordFile: String?,
                               connectHeaders: [(String, String)], server: TunnelURL,
                               environment: [String: String]) throws(ConfigurationError) -> (ProxyRoute?, String) {
        let selection: ProxySelection
        do {
            let explicit = try proxy.map { text throws(ProxyConfigurationError) in try ProxyURL.parse(text) }
            selection = try ProxySelection.choose(explicit: explicit, disabled: noProxy, serverHost: server.host,
                                                  serverPort: server.port, secure: server.secure, environment: environment)
        } catch {
            throw ConfigurationError(error.message)
        }
        guard let url = selection.proxy else { return (nil, selection.reason) }
        var name = url.user
        var password = url.password
        if let user {
            if let colon = user.firstIndex(of: ":") {
                name = String(user[..<colon])
                password = String(user[user.index(after: colon)...])
            } else {
                name = user
            }
        }
        if let passwordFile {
            guard let text = try? String(contentsOfFile: passwordFile, encoding: .utf8) else {
                throw ConfigurationError("--proxy-password-file \(passwordFile) cannot be read")
            }
            password = String(text.split(whereSeparator: \.isNewline).first ?? "")
        } else if let fromEnvironment = environment["ADIT_PROXY_PASSWORD"], name != nil {
            password = fromEnvironment
        }
        var credentials: ProxyCredentials?
        if let name, !name.isEmpty {
            guard let password else {
                throw ConfigurationError(
                    "the proxy user \(name) has no password: put it in a file (--proxy-password-file FILE) or in ADIT_PROXY_PASSWORD")
            }
            credentials = ProxyCredentials(user: name, password: password)
        }
        let route = ProxyRoute(url: ProxyURL(kind: url.kind, host: url.host, port: url.port, user: name),
                               credentials: credentials, connectHeaders: connectHeaders, reason: selection.reason)
        return (route, selection.reason)
    }
}

/// The TLS handshake with an https:// proxy failed.
struct ProxyTLSFailure: Error {
    var underlying: any Error
}
