/// The peer broke RFC 6455; `closeCode` is what we tell it before closing.
public struct WebSocketProtocolError: Error, Sendable, CustomStringConvertible {
    public var closeCode: WebSocketCloseCode
    public var detail: String
    public var file: String
    public var line: UInt

    public init(_ closeCode: WebSocketCloseCode, _ detail: String, file: String = #fileID, line: UInt = #line) {
        self.closeCode = closeCode
        self.detail = detail
        self.file = file
        self.line = line
    }

    public var description: String { "WebSocket protocol error: \(detail) (close \(closeCode.rawValue), \(file):\(line))" }
}
