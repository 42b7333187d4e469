import AditMux

/// One `-L [BIND:]PORT:HOST:HOSTPORT[/udp]` local forward, as in ssh (plus UDP).
public struct ForwardSpec: Hashable, Sendable, CustomStringConvertible {
    public var bind: HostPort
    public var target: MuxTarget
    public var kind: MuxStreamKind

    public init(bind: HostPort, target: MuxTarget, kind: MuxStreamKind = .stream) {
        self.bind = bind
        self.target = target
        self.kind = kind
    }

    public static func parse(_ text: String) throws(ConfigurationError) -> ForwardSpec {
        let (bind, target, kind) = try ForwardSpec.parseFields(
            text, flag: "-L", bindWhat: "local port",
            usage: "-L '\(text)' must be [BIND:]PORT:HOST:HOSTPORT[/udp], e.g. -L 8080:example.com:80, -L [::1]:2222:10.0.0.5:22 or -L 5353:10.0.0.53:53/udp")
        return ForwardSpec(bind: bind, target: target, kind: kind)
    }

    /// `[BIND:]PORT:HOST:HOSTPORT[/udp]`, the shape `-L` and `-R` share; BIND defaults to 127.0.0.1, an empty
    /// BIND or `*` means every address, as in ssh.
    static func parseFields(_ text: String, flag: String, bindWhat: String, usage: String) throws(ConfigurationError)
        -> (bind: HostPort, target: MuxTarget, kind: MuxStreamKind)
    {
        let (fields, kind) = try ForwardSpec.fields(text, flag: flag)
        let bindHost: String
        let rest: ArraySlice<String>
        switch fields.count {
        case 3:
            bindHost = "127.0.0.1"
            rest = fields[...]
        case 4:
            bindHost = fields[0].isEmpty || fields[0] == "*" ? "0.0.0.0" : fields[0]
            rest = fields[1...]
        default:
            throw ConfigurationError(usage)
        }
        let port = try HostPort.parsePort(rest[rest.startIndex], what: "\(flag) '\(text)' \(bindWhat)", allowZero: true)
        let target = try ForwardSpec.target(host: rest[rest.startIndex + 1], port: rest[rest.startIndex + 2],
                                            flag: flag, text: text)
        return (HostPort(host: bindHost, port: port), target, kind)
    }

    /// Splits off a `/udp` or `/tcp` suffix, then the colon-separated fields (IPv6 in brackets).
    static func fields(_ text: String, flag: String) throws(ConfigurationError) -> ([String], MuxStreamKind) {
        var body = text
        var kind = MuxStreamKind.stream
        if let slash = text.lastIndex(of: "/"), !text[slash...].contains("]"), !text[slash...].contains(":") {
            switch text[text.index(after: slash)...].lowercased() {
            case "udp": kind = .datagram
            case "tcp": kind = .stream
            default:
                throw ConfigurationError("\(flag) '\(text)': the suffix after '/' must be udp or tcp, e.g. \(flag) 5353:10.0.0.53:53/udp")
            }
            body = String(text[..<slash])
        }
        return (try HostPort.splitFields(body, what: flag), kind)
    }

    static func target(host: String, port: String, flag: String, text: String) throws(ConfigurationError) -> MuxTarget {
        guard !host.isEmpty else { throw ConfigurationError("\(flag) '\(text)' has an empty target host") }
        guard host.utf8.count <= 255, host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError("\(flag) '\(text)': target host '\(host)' is not a valid host name")
        }
        let targetPort = try HostPort.parsePort(port, what: "\(flag) '\(text)' target port")
        return MuxTarget(hostText: host, port: UInt16(targetPort))
    }

    public var description: String { "\(bind) -> \(target)\(kind == .datagram ? "/udp" : "")" }
}

/// One `-R [BIND:]PORT:HOST:HOSTPORT[/udp]` reverse forward: the server listens on BIND:PORT (its loopback by
/// default, as ssh), and every connection there is carried back to HOST:HOSTPORT reached from this side.
public struct ReverseForwardSpec: Hashable, Sendable, CustomStringConvertible {
    /// Where the server listens; port 0 lets it pick.
    public var bind: HostPort
    public var target: MuxTarget
    public var kind: MuxStreamKind

    public init(bind: HostPort, target: MuxTarget, kind: MuxStreamKind = .stream) {
        self.bind = bind
        self.target = target
        self.kind = kind
    }

    public static func parse(_ text: String) throws(ConfigurationError) -> ReverseForwardSpec {
        let (bind, target, kind) = try ForwardSpec.parseFields(
            text, flag: "-R", bindWhat: "server port",
            usage: "-R '\(text)' must be [BIND:]PORT:HOST:HOSTPORT[/udp] (the server listens on BIND:PORT, the connections come back to HOST:HOSTPORT here), e.g. -R 8080:localhost:3000")
        guard IPAddressText.parseIPv4(bind.host) != nil || IPAddressText.parseIPv6(bind.host) != nil else {
            throw ConfigurationError("-R '\(text)': the server's bind address '\(bind.host)' must be an IP address, e.g. 127.0.0.1, 0.0.0.0 or [::1]")
        }
        return ReverseForwardSpec(bind: bind, target: target, kind: kind)
    }

    var listenRequest: MuxListenRequest {
        MuxListenRequest(bind: MuxTarget(hostText: bind.host, port: UInt16(bind.port)), kind: kind)
    }

    public var description: String { "server \(bind) -> \(target)\(kind == .datagram ? "/udp" : "")" }
}
