/// The peer broke docs/protocol.md. Carries where we noticed it, like swift-nio-http2's errors, so a log line
/// leads straight to the check that fired.
public struct MuxProtocolError: Error, Sendable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case truncatedFrame
        case badStreamID
        case badLength
        case badTarget
        case badWindowUpdate
        case helloMissing
        case unsupportedVersion
        case flowControl
        case streamState
        case messageTooLarge
    }

    public var kind: Kind
    public var detail: String
    public var file: String
    public var line: UInt

    public init(_ kind: Kind, _ detail: String, file: String = #fileID, line: UInt = #line) {
        self.kind = kind
        self.detail = detail
        self.file = file
        self.line = line
    }

    public var description: String { "tunnel protocol error: \(detail) (\(file):\(line))" }
}
