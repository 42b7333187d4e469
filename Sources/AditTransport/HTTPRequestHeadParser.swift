import NIOCore
import NIOHTTP1

/// Reads one HTTP/1.x request head from raw bytes, keeping whatever follows it untouched: the server's
/// WebSocket handshake switches protocols in the same step, so frames a client sent right behind its request
/// reach the new handlers as they are.
public struct HTTPRequestHeadParser: Sendable {
    public enum Result {
        case needMoreData
        case head(HTTPRequestHead, rest: ByteBuffer)
    }

    private var buffer: ByteBuffer?

    public init() {}

    public mutating func append(_ bytes: ByteBuffer) throws(HTTPResponseParseError) -> Result {
        guard let (lines, rest) = try HTTPHeadScanner.take(bytes, into: &buffer) else { return .needMoreData }
        var remaining = lines
        guard !remaining.isEmpty else { throw HTTPResponseParseError("an empty request") }
        let requestLine = remaining.removeFirst()
        let parts = requestLine.split(separator: " ", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[2].hasPrefix("HTTP/1."), !parts[0].isEmpty, !parts[1].isEmpty else {
            throw HTTPResponseParseError("the request line is not HTTP/1.x: \(requestLine.prefix(60))")
        }
        let minor = parts[2] == "HTTP/1.0" ? 0 : 1
        let head = HTTPRequestHead(version: .init(major: 1, minor: minor), method: HTTPMethod(rawValue: String(parts[0])),
                                   uri: String(parts[1]), headers: try HTTPHeadScanner.headers(remaining))
        return .head(head, rest: rest)
    }
}
