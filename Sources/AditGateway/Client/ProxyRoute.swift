import AditProxy
import Foundation

/// The proxy a client goes through, with what it needs to get past it; `next` are further HTTP proxies
/// reached through it, one CONNECT inside another (a chain), the last of which connects to the server.
public struct ProxyRoute: Sendable {
    public struct Hop: Sendable {
        public var url: ProxyURL
        public var credentials: ProxyCredentials?
    }

    public var url: ProxyURL
    public var credentials: ProxyCredentials?
    public var next: [Hop] = []
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

    init(proxy: ProxyURL, underlying: any Error) {
        // A failure at a later hop of a chain names that hop.
        if let hop = underlying as? ChainHopFailure {
            self.proxy = hop.proxy
            self.underlying = hop.underlying
        } else {
            self.proxy = proxy
            self.underlying = underlying
        }
    }

    var description: String { "through the proxy \(proxy): \(underlying)" }
}

extension ProxyRoute {
    /// What the client options and the environment say about the proxy: nil for a direct connection, with
    /// the reason either way (for the log). The password comes from `passwordFile`, `ADIT_PROXY_PASSWORD`, or
    /// (discouraged, visible in `ps`) `--proxy-user USER:PASS` or the proxy URL.
    public static func resolve(proxy: [String], noProxy: Bool, user: String?, passwordFile: String?,
                               connectHeaders: [(String, String)], server: TunnelURL,
                               environment: [String: String]) throws(ConfigurationError) -> (ProxyRoute?, String) {
        let selection: ProxySelection
        do {
            let explicit = try proxy.first.map { text throws(ProxyConfigurationError) in try ProxyURL.parse(text) }
            selection = try ProxySelection.choose(explicit: explicit, disabled: noProxy, serverHost: server.host,
                                                  serverPort: server.port, secure: server.secure, environment: environment)
        } catch {
            throw ConfigurationError(error.message)
        }
        guard let url = selection.proxy else { return (nil, selection.reason) }
        var chain = [url]
        for text in proxy.dropFirst() {
            do {
                chain.append(try ProxyURL.parse(text))
            } catch {
                throw ConfigurationError(error.message)
            }
        }
        if chain.count > 1, let socks = chain.first(where: { $0.kind == .socks5 || $0.kind == .socks5h }) {
            throw ConfigurationError("--proxy \(socks): a chain of proxies (several --proxy) takes http:// and https:// proxies only")
        }
        // The password: a file, ADIT_PROXY_PASSWORD, or (visible in ps) USER:PASS.
        var sharedUser: String?
        var sharedPassword: String?
        if let user {
            if let colon = user.firstIndex(of: ":") {
                sharedUser = String(user[..<colon])
                sharedPassword = String(user[user.index(after: colon)...])
            } else {
                sharedUser = user
            }
        }
        if let passwordFile {
            guard let text = try? String(contentsOfFile: passwordFile, encoding: .utf8) else {
                throw ConfigurationError("--proxy-password-file \(passwordFile) cannot be read")
            }
            sharedPassword = String(text.split(whereSeparator: \.isNewline).first ?? "")
        } else if sharedPassword == nil, let fromEnvironment = environment["ADIT_PROXY_PASSWORD"] {
            sharedPassword = fromEnvironment
        }
        // Each hop: its own user:password from its URL, else --proxy-user (the first hop without its own).
        var hops: [Hop] = []
        var sharedUsed = false
        for hop in chain {
            var name = hop.user
            var password = hop.password
            if name == nil, let sharedUser, !sharedUsed {
                name = sharedUser
                password = sharedPassword
                sharedUsed = true
            } else if name != nil, password == nil {
                password = sharedPassword
            }
            var credentials: ProxyCredentials?
            if let name, !name.isEmpty {
                guard let password else {
                    throw ConfigurationError(
                        "the proxy user \(name) has no password: put it in a file (--proxy-password-file FILE) or in ADIT_PROXY_PASSWORD")
                }
                credentials = ProxyCredentials(user: name, password: password)
            }
            hops.append(Hop(url: ProxyURL(kind: hop.kind, host: hop.host, port: hop.port, user: name), credentials: credentials))
        }
        var route = ProxyRoute(url: hops[0].url, credentials: hops[0].credentials, connectHeaders: connectHeaders,
                               reason: selection.reason)
        route.next = Array(hops.dropFirst())
        return (route, selection.reason)
    }
}

/// A failure at hop `proxy` of a chain (not its first proxy).
struct ChainHopFailure: Error {
    var proxy: ProxyURL
    var underlying: any Error
}

/// The TLS handshake with an https:// proxy failed.
struct ProxyTLSFailure: Error {
    var underlying: any Error
}
