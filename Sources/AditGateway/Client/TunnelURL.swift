/// The server address a client dials: `ws://HOST[:PORT][/path]`.
public struct TunnelURL: Sendable, Equatable, CustomStringConvertible {
    public var secure: Bool
    public var host: String
    public var port: Int
    public var path: String

    public static func parse(_ text: String) throws(ConfigurationError) -> TunnelURL {
        let secure: Bool
        let rest: Substring
        if text.lowercased().hasPrefix("ws://") {
            secure = false
            rest = text.dropFirst(5)
        } else if text.lowercased().hasPrefix("wss://") {
            secure = true
            rest = text.dropFirst(6)
        } else {
            throw ConfigurationError("server URL '\(text)' must start with ws:// or wss://, e.g. wss://gateway.example.com/")
        }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var path = String(rest.dropFirst(authority.count))
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty { path = "/" }
        guard !authority.contains("@") else {
            throw ConfigurationError("server URL '\(text)': credentials in the URL are not supported")
        }
        let hostPort: HostPort
        if authority.hasSuffix("]") || !authority.contains(":") || (authority.first == "[" && !authority.contains("]:")) {
            let fields = try HostPort.splitFields(String(authority), what: "server URL '\(text)'")
            guard fields.count == 1, !fields[0].isEmpty else {
                throw ConfigurationError("server URL '\(text)' has no host")
            }
            hostPort = HostPort(host: fields[0], port: secure ? 443 : 80)
        } else {
            hostPort = try HostPort.parse(String(authority), what: "server URL '\(text)'")
        }
        return TunnelURL(secure: secure, host: hostPort.host, port: hostPort.port, path: path)
    }

    /// The value of the Host header (port omitted when it is the scheme's default).
    public var hostHeader: String {
        let h = host.contains(":") ? "[\(host)]" : host
        return port == (secure ? 443 : 80) ? h : "\(h):\(port)"
    }

    public var description: String { "\(secure ? "wss" : "ws")://\(hostHeader)\(path)" }
}
