import AditMux

/// One `--raw PATH=HOST:PORT` of the server: WebSocket connections on PATH are bridged, one TCP connection
/// each, to HOST:PORT (websockify-style: binary messages, subprotocol `binary` or none, no multiplexing).
public struct RawBridgeRoute: Sendable, Equatable, CustomStringConvertible {
    public var path: String
    public var target: MuxTarget

    public init(path: String, target: MuxTarget) {
        self.path = path
        self.target = target
    }

    public static func parse(_ text: String) throws(ConfigurationError) -> RawBridgeRoute {
        guard let equals = text.firstIndex(of: "=") else {
            throw ConfigurationError("--raw '\(text)' must be PATH=HOST:PORT, e.g. --raw /vnc=127.0.0.1:5900")
        }
        let path = String(text[..<equals])
        guard path.hasPrefix("/"), !path.contains("?"), !path.contains("#"), !path.contains(" ") else {
            throw ConfigurationError("--raw '\(text)': the path must start with / (e.g. /vnc) and hold no query")
        }
        let target = try HostPort.parse(String(text[text.index(after: equals)...]), what: "--raw '\(text)' target")
        guard target.port > 0 else { throw ConfigurationError("--raw '\(text)': the target port must not be 0") }
        return RawBridgeRoute(path: path, target: MuxTarget(hostText: target.host, port: UInt16(target.port)))
    }

    public var description: String { "\(path) -> \(target)" }
}
