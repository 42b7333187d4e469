import AditMux
import NIOHTTP1

/// `--trusted-proxy CIDR`: the reverse proxies (nginx, haproxy, a cloud load balancer) whose `X-Forwarded-For`
/// is believed. Behind one, every tunnel comes from the proxy's address; the client's own address, which the
/// access log, the per-address session limit and the wrong-password throttle need, is in that header. Anyone
/// else can write the header too, so it counts only when the connection comes from a listed proxy, and only the
/// entries that trusted proxies appended (read from the right) are believed.
public struct TrustedProxies: Sendable, CustomStringConvertible {
    private let networks: [TargetPattern]

    public init() {
        networks = []
    }

    /// Addresses or CIDR ranges, IPv4 or IPv6 (no brackets needed): `10.0.0.0/8`, `127.0.0.1`, `fd00::/8`.
    public static func parse(_ texts: [String]) throws(ConfigurationError) -> TrustedProxies {
        var networks: [TargetPattern] = []
        for text in texts {
            if text.allSatisfy({ $0 == "," || $0.isWhitespace }) {
                throw ConfigurationError("--trusted-proxy '\(text)' names no address: give an IP address or a CIDR range, e.g. 10.0.0.0/8")
            }
            for var piece in text.split(separator: ",").map({ $0.trimmingCharacters(in: .whitespaces) }) where !piece.isEmpty {
                if piece.hasPrefix("["), let close = piece.firstIndex(of: "]") {
                    piece.remove(at: close)
                    piece.removeFirst()
                }
                let address = piece.split(separator: "/", maxSplits: 1).first.map(String.init) ?? piece
                let isV6 = IPAddressText.parseIPv6(address) != nil
                guard isV6 || IPAddressText.parseIPv4(address) != nil else {
                    throw ConfigurationError("--trusted-proxy '\(piece)' must be an IP address or a CIDR range, e.g. 10.0.0.0/8, 127.0.0.1 or fd00::/8")
                }
                let pattern = (isV6 ? "[\(piece)]" : piece) + ":*"
                do {
                    networks.append(try TargetPattern.parse(pattern, flag: "--trusted-proxy"))
                } catch {
                    throw ConfigurationError("--trusted-proxy '\(piece)' must be an IP address or a CIDR range, e.g. 10.0.0.0/8, 127.0.0.1 or fd00::/8")
                }
            }
        }
        return TrustedProxies(networks: networks)
    }

    private init(networks: [TargetPattern]) {
        self.networks = networks
    }

    public var isEmpty: Bool { networks.isEmpty }

    public var description: String {
        networks.map { String($0.text.dropLast(2)).replacingOccurrences(of: "[", with: "").replacingOccurrences(of: "]", with: "") }
            .joined(separator: ", ")
    }

    public func contains(_ address: String) -> Bool {
        let host = MuxTarget(hostText: address, port: 1).host
        if case .name = host { return false }
        return networks.contains { $0.matches(host: host, port: 1) }
    }

    /// The client's address: the connection's peer, unless that is a trusted proxy with an `X-Forwarded-For`,
    /// then the rightmost entry that is not itself a trusted proxy. An entry that is not an address stops the
    /// walk (nothing left of it can be believed) and the last trusted hop is the answer.
    public func clientAddress(peer: String, headers: HTTPHeaders) -> (address: String, forwarded: Bool) {
        guard contains(peer) else { return (peer, false) }
        let entries = headers["X-Forwarded-For"].flatMap { $0.split(separator: ",") }
            .map { Self.bareAddress($0.trimmingCharacters(in: .whitespaces)) }
        var client = peer
        for entry in entries.reversed() {
            guard let entry else { break }
            client = entry
            if !contains(entry) { break }
        }
        return (client, client != peer)
    }

    /// "203.0.113.7", "[2001:db8::1]:443", "203.0.113.7:5555" (some proxies add the port) → the address alone.
    static func bareAddress(_ text: String) -> String? {
        var text = text
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            text = String(text[text.index(after: text.startIndex)..<close])
        } else if text.filter({ $0 == ":" }).count == 1, let colon = text.firstIndex(of: ":") {
            text = String(text[..<colon])
        }
        if IPAddressText.parseIPv4(text) != nil || IPAddressText.parseIPv6(text) != nil { return text }
        return nil
    }
}
