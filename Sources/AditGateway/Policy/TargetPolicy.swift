import Foundation
import AditMux

/// Which targets the server may connect to: denied unless an `--allow` pattern matches. Checked on every
/// stream open, never once per session (chisel's bug), and names are also checked after resolution so
/// `10.0.0.0/8:22` covers `db.internal:22` when it resolves there.
public struct TargetPolicy: Sendable, CustomStringConvertible {
    public private(set) var patterns: [TargetPattern]
    /// Loopback, link-local and metadata addresses pass a broad rule too: only for targets that come from the
    /// client's own command line (its `-R`), never for what a peer asks.
    private var opensSpecialAddresses = false

    public init(patterns: [TargetPattern]) {
        self.patterns = patterns
    }

    public static func parse(_ texts: [String], flag: String = "--allow") throws(ConfigurationError) -> TargetPolicy {
        var patterns: [TargetPattern] = []
        for text in texts {
            // A comma list is several patterns ('a:22,b:80'); an empty one is no pattern at all.
            let pieces = text.split(separator: ",", omittingEmptySubsequences: true)
            guard !pieces.isEmpty else { _ = try TargetPattern.parse(text, flag: flag); continue }
            for piece in pieces {
                patterns.append(try TargetPattern.parse(piece.trimmingCharacters(in: .whitespaces), flag: flag))
            }
        }
        return TargetPolicy(patterns: patterns)
    }

    /// Every target, TCP and UDP: for the client's own `-R` targets, which come from its command line.
    static let allowingEverything: TargetPolicy = {
        var policy = TargetPolicy(patterns: [
            TargetPattern(host: .any, ports: nil, kind: .stream, text: "*:*"),
            TargetPattern(host: .any, ports: nil, kind: .datagram, text: "*:*/udp"),
        ])
        policy.opensSpecialAddresses = true
        return policy
    }()

    /// Whether the target as named (name or literal address) is allowed.
    public func allows(_ target: MuxTarget, kind: MuxStreamKind = .stream) -> Bool {
        patterns.contains { $0.kind == kind && $0.matches(host: target.host, port: target.port) }
    }

    /// Whether a resolved address of a named target is allowed by an address pattern.
    public func allows(address: MuxTarget.Host, port: UInt16, kind: MuxStreamKind = .stream) -> Bool {
        patterns.contains { $0.kind == kind && $0.matches(host: address, port: port) }
    }

    /// Why `address` (the one a stream would connect to; `name` when the client asked by name) may not be
    /// reached, or nil when it may: a rule must match it by name or by address, and a loopback, link-local or
    /// metadata address needs a rule that names it explicitly (a broad `*:*` is not enough).
    package func refusal(connecting address: MuxTarget.Host, port: UInt16, kind: MuxStreamKind, name: String?) -> String? {
        let address = address.normalized
        let shown = MuxTarget(host: address, port: port)
        let what = name.map { "\($0):\(port) (\(shown))" } ?? "\(shown)"
        let rules = patterns.filter { $0.kind == kind && ($0.ports?.contains(port) ?? true) }
        let byName = name.map { n in rules.contains { $0.matches(host: .name(n), port: port) } } ?? false
        guard byName || rules.contains(where: { $0.matches(host: address, port: port) }) else {
            return "\(what)\(kind == .datagram ? "/udp" : "") is not allowed by the server's --allow rules\(kind == .datagram ? " (UDP needs a /udp rule)" : "")"
        }
        guard !opensSpecialAddresses, let special = SpecialAddress.range(of: address) else { return nil }
        let explicit = rules.contains { rule in
            if let name, case .name(let n) = rule.host, n == name { return true }
            return rule.names(address, within: special.host)
        }
        return explicit ? nil
            : "\(what) is a \(special.category) address, which a broad rule does not open; allow it by name, e.g. --allow '\(shown)'"
    }

    /// Whether some rule could allow a name only after it is resolved (an address rule): if not, and no name rule
    /// matches, the name is refused without a lookup.
    func mayAllowAfterResolving(kind: MuxStreamKind) -> Bool {
        patterns.contains { rule in
            guard rule.kind == kind else { return false }
            switch rule.host {
            case .any, .ipv4, .ipv6: return true
            case .name, .suffix: return false
            }
        }
    }

    public var description: String { patterns.map(\.description).joined(separator: ", ") }
}

/// One `--allow` pattern: `host:port`, `host:*`, `*.example.com:443`, `10.0.0.0/8:22`, `[::1]:*`,
/// `[fd00::/8]:*`, `*:*`, and port ranges `1000-2000`; TCP, or UDP with a `/udp` suffix (`10.0.0.53:53/udp`) —
/// a pattern never opens both, so allowing TCP never silently allows UDP.
public struct TargetPattern: Sendable, Equatable, CustomStringConvertible {
    public enum HostRule: Sendable, Equatable {
        case any
        case name(String)
        /// `*.example.com`: any name below example.com (not example.com itself).
        case suffix(String)
        case ipv4(network: UInt32, prefix: Int)
        case ipv6(network: [UInt8], prefix: Int)
    }

    public var host: HostRule
    public var ports: ClosedRange<UInt16>?  // nil = any port
    public var kind: MuxStreamKind
    public let text: String

    public static func parse(_ fullText: String, flag: String = "--allow") throws(ConfigurationError) -> TargetPattern {
        let usage = "\(flag) '\(fullText)' must be HOST:PORT[/udp] where HOST is a name, *.domain, an IP, a CIDR (10.0.0.0/8, [fd00::/8]) or *, and PORT a number, a range (1000-2000) or *"
        var text = fullText
        var kind = MuxStreamKind.stream
        if text.lowercased().hasSuffix("/udp") {
            kind = .datagram
            text = String(text.dropLast(4))
        } else if text.lowercased().hasSuffix("/tcp") {
            text = String(text.dropLast(4))
        }
        guard let colon = text.lastIndex(of: ":") else { throw ConfigurationError(usage) }
        var hostText = String(text[..<colon])
        let portText = String(text[text.index(after: colon)...])

        let ports: ClosedRange<UInt16>?
        if portText == "*" {
            ports = nil
        } else if let dash = portText.firstIndex(of: "-") {
            guard let lo = UInt16(portText[..<dash]), let hi = UInt16(portText[portText.index(after: dash)...]),
                lo >= 1, lo <= hi
            else { throw ConfigurationError(usage) }
            ports = lo...hi
        } else {
            guard let p = UInt16(portText), p >= 1 else { throw ConfigurationError(usage) }
            ports = p...p
        }

        let bracketed = hostText.hasPrefix("[") && hostText.hasSuffix("]")
        if bracketed { hostText = String(hostText.dropFirst().dropLast()) }
        let rule: HostRule
        if hostText == "*" && !bracketed {
            rule = .any
        } else if let slash = hostText.firstIndex(of: "/") {
            let addr = String(hostText[..<slash])
            guard let prefix = Int(hostText[hostText.index(after: slash)...]) else { throw ConfigurationError(usage) }
            if !bracketed, let v4 = IPAddressText.parseIPv4(addr), (0...32).contains(prefix) {
                rule = .ipv4(network: prefix == 0 ? 0 : v4 & ~UInt32(0) << (32 - prefix), prefix: prefix)
            } else if let v6 = IPAddressText.parseIPv6(addr), (0...128).contains(prefix) {
                rule = .ipv6(network: TargetPattern.masked(v6, prefix: prefix), prefix: prefix)
            } else {
                throw ConfigurationError(usage)
            }
        } else if bracketed {
            guard let v6 = IPAddressText.parseIPv6(hostText) else { throw ConfigurationError(usage) }
            rule = .ipv6(network: v6, prefix: 128)
        } else if let v4 = IPAddressText.parseIPv4(hostText) {
            rule = .ipv4(network: v4, prefix: 32)
        } else if hostText.hasPrefix("*.") {
            let suffix = String(hostText.dropFirst(2)).lowercased()
            guard TargetPattern.isHostName(suffix) else { throw ConfigurationError(usage) }
            rule = .suffix(suffix)
        } else {
            guard TargetPattern.isHostName(hostText) else {
                if IPAddressText.parseIPv6(hostText) != nil {
                    throw ConfigurationError("\(flag) '\(fullText)': put IPv6 addresses in brackets, e.g. [::1]:22")
                }
                if hostText.contains(":") {
                    throw ConfigurationError("\(flag) '\(fullText)' is not one HOST:PORT pattern: separate several with commas ('a:22,b:80') or repeat \(flag)")
                }
                throw ConfigurationError(usage)
            }
            rule = .name(hostText.lowercased())
        }
        return TargetPattern(host: rule, ports: ports, kind: kind, text: fullText)
    }

    static func isHostName(_ s: String) -> Bool {
        !s.isEmpty && s.utf8.count <= 253 && s.utf8.allSatisfy {
            ($0 >= 0x30 && $0 <= 0x39) || ($0 >= 0x41 && $0 <= 0x5A) || ($0 >= 0x61 && $0 <= 0x7A) || $0 == 0x2D
                || $0 == 0x2E || $0 == 0x5F
        } && !s.hasPrefix(".") && !s.hasSuffix(".")
    }

    static func masked(_ bytes: [UInt8], prefix: Int) -> [UInt8] {
        (0..<16).map { i in
            let bits = max(0, min(8, prefix - i * 8))
            return bits == 0 ? 0 : bytes[i] & UInt8(truncatingIfNeeded: 0xFF << (8 - bits))
        }
    }

    /// This rule matches `address` and lies inside `range` (a special range): it names the address on purpose,
    /// rather than covering it by being broad.
    func names(_ address: MuxTarget.Host, within range: HostRule) -> Bool {
        guard matches(host: address, port: ports?.lowerBound ?? 1) else { return false }
        switch (host, range) {
        case (.ipv4(_, let prefix), .ipv4(_, let rangePrefix)): return prefix >= rangePrefix
        case (.ipv6(_, let prefix), .ipv6(_, let rangePrefix)): return prefix >= rangePrefix
        default: return false
        }
    }

    public func matches(host target: MuxTarget.Host, port: UInt16) -> Bool {
        if let ports, !ports.contains(port) { return false }
        switch (host, target) {
        case (.any, _):
            return true
        case (.name(let n), .name(let t)):
            return n == t
        case (.suffix(let s), .name(let t)):
            return t.hasSuffix("." + s)
        case (.ipv4(let network, let prefix), .ipv4(let a)):
            return prefix == 0 || (a & ~UInt32(0) << (32 - prefix)) == network
        case (.ipv4(let network, let prefix), .ipv6(let b)):
            // IPv4-mapped IPv6 (::ffff:a.b.c.d) is the same host.
            guard b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF else { return false }
            let a = UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15])
            return prefix == 0 || (a & ~UInt32(0) << (32 - prefix)) == network
        case (.ipv6(let network, let prefix), .ipv6(let b)):
            return TargetPattern.masked(b, prefix: prefix) == network
        default:
            return false
        }
    }

    public var description: String { text }
}
