import AditMux

/// One `-L [BIND:]PORT:HOST:HOSTPORT` local forward, as in ssh.
public struct ForwardSpec: Hashable, Sendable, CustomStringConvertible {
    public var bind: HostPort
    public var target: MuxTarget

    public init(bind: HostPort, target: MuxTarget) {
        self.bind = bind
        self.target = target
    }

    public static func parse(_ text: String) throws(ConfigurationError) -> ForwardSpec {
        let fields = try HostPort.splitFields(text, what: "-L")
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
            throw ConfigurationError(
                "-L '\(text)' must be [BIND:]PORT:HOST:HOSTPORT, e.g. -L 8080:example.com:80 or -L [::1]:2222:10.0.0.5:22")
        }
        let port = try HostPort.parsePort(rest[rest.startIndex], what: "-L '\(text)' local port", allowZero: true)
        let host = rest[rest.startIndex + 1]
        guard !host.isEmpty else { throw ConfigurationError("-L '\(text)' has an empty target host") }
        guard host.utf8.count <= 255, host.utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else {
            throw ConfigurationError("-L '\(text)': target host '\(host)' is not a valid host name")
        }
        let targetPort = try HostPort.parsePort(rest[rest.startIndex + 2], what: "-L '\(text)' target port")
        return ForwardSpec(bind: HostPort(host: bindHost, port: port),
                           target: MuxTarget(hostText: host, port: UInt16(targetPort)))
    }

    public var description: String { "\(bind) -> \(target)" }
}
