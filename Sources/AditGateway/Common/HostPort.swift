import AditMux

/// A `HOST:PORT` as users type it: IPv6 in brackets, port 0…65535.
public struct HostPort: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT` or `[V6]:PORT`. `what` names the thing in the error ("--listen").
    public static func parse(_ text: String, what: String, allowZeroPort: Bool = false) throws(ConfigurationError) -> HostPort {
        var fields = try splitFields(text, what: what)
        guard fields.count == 2 else {
            throw ConfigurationError("\(what) '\(text)' must be HOST:PORT (IPv6 in brackets, e.g. [::1]:8080)")
        }
        let port = try parsePort(fields.removeLast(), what: what, allowZero: allowZeroPort)
        let host = fields[0]
        guard !host.isEmpty else { throw ConfigurationError("\(what) '\(text)' has an empty host") }
        return HostPort(host: host, port: port)
    }

    /// Parses a local listener `[BIND:]PORT` (`-D`, `--http-proxy`, `--raw -L`): BIND defaults to 127.0.0.1; an
    /// empty BIND or `*` means every address.
    public static func parseListener(_ text: String, what: String) throws(ConfigurationError) -> HostPort {
        let fields = try splitFields(text, what: what)
        switch fields.count {
        case 1:
            return HostPort(host: "127.0.0.1", port: try parsePort(fields[0], what: "\(what) '\(text)' local port", allowZero: true))
        case 2:
            let bind = fields[0].isEmpty || fields[0] == "*" ? "0.0.0.0" : fields[0]
            return HostPort(host: bind, port: try parsePort(fields[1], what: "\(what) '\(text)' local port", allowZero: true))
        default:
            throw ConfigurationError("\(what) '\(text)' must be [BIND:]PORT, e.g. \(what) 1080 or \(what) 127.0.0.1:1080")
        }
    }

    /// Splits on ':' outside brackets and removes the brackets: "[::1]:80:x" → ["::1", "80", "x"].
    public static func splitFields(_ text: String, what: String) throws(ConfigurationError) -> [String] {
        var fields: [String] = []
        var current = ""
        var inBracket = false
        for ch in text {
            switch ch {
            case "[":
                guard !inBracket, current.isEmpty else { throw ConfigurationError("\(what) '\(text)' has a misplaced '['") }
                inBracket = true
            case "]":
                guard inBracket else { throw ConfigurationError("\(what) '\(text)' has a ']' without '['") }
                inBracket = false
                guard IPAddressText.parseIPv6(current) != nil else {
                    throw ConfigurationError("\(what) '\(text)': '\(current)' in brackets is not an IPv6 address")
                }
            case ":" where !inBracket:
                fields.append(current)
                current = ""
            default:
                current.append(ch)
            }
        }
        guard !inBracket else { throw ConfigurationError("\(what) '\(text)' has a '[' without ']'") }
        fields.append(current)
        return fields
    }

    public static func parsePort(_ text: String, what: String, allowZero: Bool = false) throws(ConfigurationError) -> Int {
        guard let port = Int(text), port >= (allowZero ? 0 : 1), port <= 65535 else {
            throw ConfigurationError("\(what): '\(text)' is not a port number (1-65535)")
        }
        return port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}
