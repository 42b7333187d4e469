import Foundation

/// A proxy to reach the server through: `http://`, `https://` (TLS to the proxy), `socks5://` (names resolved
/// here) or `socks5h://` (names resolved by the proxy), with optional `user:password@` (percent-encoded).
public struct ProxyURL: Sendable, Equatable, CustomStringConvertible {
    public enum Kind: String, Sendable {
        case http, https, socks5, socks5h
    }

    public var kind: Kind
    public var host: String
    public var port: Int
    public var user: String?
    public var password: String?

    public init(kind: Kind, host: String, port: Int, user: String? = nil, password: String? = nil) {
        self.kind = kind
        self.host = host
        self.port = port
        self.user = user
        self.password = password
    }

    /// As curl: no scheme means http; the default port is 1080 (443 for https).
    public static func parse(_ text: String, what: String = "--proxy") throws(ProxyConfigurationError) -> ProxyURL {
        var rest = Substring(text.trimmingSpaces)
        var kind = Kind.http
        if let range = rest.range(of: "://") {
            let scheme = rest[..<range.lowerBound].lowercased()
            guard let k = Kind(rawValue: scheme == "socks" ? "socks5" : scheme) else {
                throw ProxyConfigurationError(
                    "\(what) '\(text)': the scheme \(scheme):// is not supported; use http://, https://, socks5:// or socks5h://")
            }
            kind = k
            rest = rest[range.upperBound...]
        }
        if let slash = rest.firstIndex(of: "/") {
            guard rest[slash...].allSatisfy({ $0 == "/" }) else {
                throw ProxyConfigurationError("\(what) '\(text)': a proxy URL has no path; use \(kind.rawValue)://HOST:PORT")
            }
            rest = rest[..<slash]
        }
        var user: String?
        var password: String?
        if let at = rest.lastIndex(of: "@") {
            let userinfo = rest[..<at]
            rest = rest[rest.index(after: at)...]
            if let colon = userinfo.firstIndex(of: ":") {
                user = String(userinfo[..<colon]).removingPercentEncoding ?? String(userinfo[..<colon])
                let p = userinfo[userinfo.index(after: colon)...]
                password = String(p).removingPercentEncoding ?? String(p)
            } else {
                user = String(userinfo).removingPercentEncoding ?? String(userinfo)
            }
        }
        var host: String
        var portText: Substring?
        if rest.hasPrefix("[") {
            guard let close = rest.firstIndex(of: "]") else {
                throw ProxyConfigurationError("\(what) '\(text)': unterminated [IPv6] address")
            }
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            let after = rest[rest.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty {
                throw ProxyConfigurationError("\(what) '\(text)': unexpected text after the address")
            }
        } else if let colon = rest.lastIndex(of: ":") {
            host = String(rest[..<colon])
            portText = rest[rest.index(after: colon)...]
        } else {
            host = String(rest)
        }
        guard !host.isEmpty, host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ProxyConfigurationError("\(what) '\(text)' has no host; e.g. http://proxy.example.com:3128")
        }
        var port = kind == .https ? 443 : 1080
        if let portText {
            guard let p = Int(portText), (1...65535).contains(p) else {
                throw ProxyConfigurationError("\(what) '\(text)': '\(portText)' is not a port (1-65535)")
            }
            port = p
        }
        return ProxyURL(kind: kind, host: host, port: port, user: user, password: password)
    }

    /// Without the password.
    public var description: String {
        let h = host.contains(":") ? "[\(host)]" : host
        let u = user.map { "\($0)@" } ?? ""
        return "\(kind.rawValue)://\(u)\(h):\(port)"
    }
}

/// A proxy setting that cannot work, in one sentence.
public struct ProxyConfigurationError: Error, Sendable, Equatable, CustomStringConvertible {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
