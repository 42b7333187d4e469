/// Where a stream should be connected: a host (name or address) and a TCP port, as carried by OPEN.
public struct MuxTarget: Hashable, Sendable, CustomStringConvertible {
    public enum Host: Hashable, Sendable {
        case ipv4(UInt32)
        case ipv6([UInt8])  // 16 bytes
        case name(String)
    }

    public var host: Host
    public var port: UInt16

    public init(host: Host, port: UInt16) {
        self.host = host
        self.port = port
    }

    /// Builds a target from user text: an IPv4 literal, an IPv6 literal (without brackets) or a host name.
    public init(hostText: String, port: UInt16) {
        if let v4 = IPAddressText.parseIPv4(hostText) {
            self.host = .ipv4(v4)
        } else if let v6 = IPAddressText.parseIPv6(hostText) {
            self.host = .ipv6(v6)
        } else {
            self.host = .name(hostText.lowercased())
        }
        self.port = port
    }

    /// The host as text a resolver or a socket address understands (IPv6 without brackets).
    public var hostText: String {
        switch host {
        case .ipv4(let a): return IPAddressText.formatIPv4(a)
        case .ipv6(let b): return IPAddressText.formatIPv6(b)
        case .name(let n): return n
        }
    }

    public var description: String {
        if case .ipv6 = host { return "[\(hostText)]:\(port)" }
        return "\(hostText):\(port)"
    }
}
