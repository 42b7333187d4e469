import AditMux

/// Addresses a tunnel server must not reach just because a broad rule (`*:*`, `0.0.0.0/0:*`) matches them: its
/// own loopback, link-local addresses, and the cloud metadata services, which hand out credentials. They are
/// allowed only by a rule that names them explicitly (`127.0.0.1:22`, `127.0.0.0/8:*`, `[::1]:*`,
/// `169.254.169.254:80`, or the exact name the client asked for).
enum SpecialAddress {
    struct Range {
        var category: String
        var host: TargetPattern.HostRule
    }

    static let ranges: [Range] = [
        Range(category: "metadata-service", host: .ipv4(network: 0xA9FE_A9FE, prefix: 32)),      // 169.254.169.254
        Range(category: "metadata-service", host: .ipv4(network: 0x6464_64C8, prefix: 32)),      // 100.100.100.200
        Range(category: "metadata-service", host: .ipv4(network: 0xA83F_8110, prefix: 32)),      // 168.63.129.16
        Range(category: "metadata-service",
              host: .ipv6(network: [0xFD, 0x00, 0x0E, 0xC2] + [UInt8](repeating: 0, count: 10) + [0x02, 0x54], prefix: 128)),
        Range(category: "loopback", host: .ipv4(network: 0x7F00_0000, prefix: 8)),
        Range(category: "this-host", host: .ipv4(network: 0, prefix: 8)),
        Range(category: "link-local", host: .ipv4(network: 0xA9FE_0000, prefix: 16)),
        Range(category: "loopback", host: .ipv6(network: [UInt8](repeating: 0, count: 15) + [1], prefix: 128)),
        Range(category: "this-host", host: .ipv6(network: [UInt8](repeating: 0, count: 16), prefix: 128)),
        Range(category: "link-local", host: .ipv6(network: [0xFE, 0x80] + [UInt8](repeating: 0, count: 14), prefix: 10)),
    ]

    /// The range `address` falls in, the most specific first (metadata before link-local).
    static func range(of address: MuxTarget.Host) -> Range? {
        ranges.first { TargetPattern(host: $0.host, ports: nil, kind: .stream, text: "").matches(host: address, port: 1) }
    }
}

extension MuxTarget.Host {
    /// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) is the IPv4 host: treated as IPv4 everywhere, so an IPv6
    /// rule cannot reach an IPv4 host that its IPv4 rules refuse.
    var normalized: MuxTarget.Host {
        guard case .ipv6(let b) = self, b.count == 16, b[0..<10].allSatisfy({ $0 == 0 }), b[10] == 0xFF, b[11] == 0xFF
        else { return self }
        return .ipv4(UInt32(b[12]) << 24 | UInt32(b[13]) << 16 | UInt32(b[14]) << 8 | UInt32(b[15]))
    }
}
