import Foundation

/// Which proxy, if any, a connection to the server goes through, and why — from `--proxy`/`--no-proxy` or,
/// when neither is given, the environment with curl's conventions:
/// `https_proxy`/`HTTPS_PROXY` for wss://, `http_proxy`/`HTTP_PROXY` for ws://, then `all_proxy`/`ALL_PROXY`;
/// `no_proxy`/`NO_PROXY` lists hosts to reach directly (see `NoProxyRule`).
public struct ProxySelection: Sendable, Equatable {
    public var proxy: ProxyURL?
    /// For the log: "from HTTPS_PROXY", "--proxy", "127.0.0.1 matches NO_PROXY entry 127.0.0.0/8", ….
    public var reason: String

    public static func choose(explicit: ProxyURL?, disabled: Bool, serverHost: String, serverPort: Int,
                              secure: Bool, environment: [String: String])
        throws(ProxyConfigurationError) -> ProxySelection
    {
        if disabled { return ProxySelection(proxy: nil, reason: "--no-proxy") }
        if let explicit { return ProxySelection(proxy: explicit, reason: "--proxy") }
        let names = secure ? ["https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"]
            : ["http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"]
        guard let name = names.first(where: { !(environment[$0] ?? "").trimmingSpaces.isEmpty }) else {
            return ProxySelection(proxy: nil, reason: "no proxy configured")
        }
        let noProxy = environment["no_proxy"] ?? environment["NO_PROXY"] ?? ""
        if let rule = NoProxyRule.parseList(noProxy).first(where: { $0.matches(host: serverHost, port: serverPort) }) {
            let variable = environment["no_proxy"] != nil ? "no_proxy" : "NO_PROXY"
            return ProxySelection(proxy: nil, reason: "\(serverHost) matches \(variable) entry '\(rule.text)'")
        }
        let proxy = try ProxyURL.parse(environment[name]!, what: name)
        return ProxySelection(proxy: proxy, reason: "from \(name)")
    }
}

/// One `NO_PROXY` entry, as curl reads them: `*` (everything), a domain (matching itself and every name below
/// it; a leading dot is ignored), an IP address, a CIDR block (`10.0.0.0/8`, `fd00::/8`), each optionally with
/// `:PORT` (IPv6 in brackets then).
public struct NoProxyRule: Sendable, Equatable {
    enum Pattern: Sendable, Equatable {
        case all
        case domain(String)
        case address([UInt8], prefix: Int)
    }

    let pattern: Pattern
    let port: Int?
    public let text: String

    public static func parseList(_ list: String) -> [NoProxyRule] {
        list.split(whereSeparator: { $0 == "," || $0 == " " }).compactMap { parse(String($0)) }
    }

    static func parse(_ entry: String) -> NoProxyRule? {
        var text = entry.trimmingSpaces
        guard !text.isEmpty else { return nil }
        if text == "*" { return NoProxyRule(pattern: .all, port: nil, text: entry) }
        var port: Int?
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]") else { return nil }
            let after = text[text.index(after: close)...]
            if after.hasPrefix(":") { port = Int(after.dropFirst()) }
            text = String(text[text.index(after: text.startIndex)..<close])
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":"),
            let p = Int(text[text.index(after: colon)...])
        {
            port = p
            text = String(text[..<colon])
        }
        var prefix: Int?
        if let slash = text.firstIndex(of: "/") {
            prefix = Int(text[text.index(after: slash)...])
            text = String(text[..<slash])
        }
        if let bytes = IPAddressBytes.parse(text) {
            let bits = bytes.count * 8
            return NoProxyRule(pattern: .address(bytes, prefix: min(prefix ?? bits, bits)), port: port, text: entry)
        }
        while text.hasPrefix(".") { text.removeFirst() }
        if text.hasPrefix("*.") { text.removeFirst(2) }
        guard !text.isEmpty else { return nil }
        return NoProxyRule(pattern: .domain(text.lowercased()), port: port, text: entry)
    }

    public func matches(host: String, port: Int) -> Bool {
        if let p = self.port, p != port { return false }
        switch pattern {
        case .all:
            return true
        case .domain(let domain):
            let h = host.lowercased().trimmingCharacters(in: CharacterSet(charactersIn: "."))
            return h == domain || h.hasSuffix("." + domain)
        case .address(let network, let prefix):
            guard let bytes = IPAddressBytes.parse(host), bytes.count == network.count else { return false }
            var remaining = prefix
            for (a, b) in zip(bytes, network) where remaining > 0 {
                let bits = min(8, remaining)
                let mask: UInt8 = bits == 8 ? 0xFF : ~(0xFF >> UInt8(bits))
                if a & mask != b & mask { return false }
                remaining -= bits
            }
            return true
        }
    }
}

public enum IPAddressBytes {
    public static func parse(_ text: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            return withUnsafeBytes(of: &v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            return withUnsafeBytes(of: &v6) { Array($0) }
        }
        return nil
    }
}
