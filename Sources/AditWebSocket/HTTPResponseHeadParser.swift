import NIOCore
import NIOHTTP1

/// Reads one HTTP/1.x response head from raw bytes, keeping whatever follows it untouched.
///
/// The client handshake parses its answer itself rather than through NIO's `HTTPResponseDecoder`: that decoder
/// leaves the pipeline only a loop tick after it is asked to, and at end of input it parses the bytes after a
/// 101 as HTTP. A server that sends its 101, a first message and a close in one segment (websockify does when
/// its target refuses) would lose them. Here the switch is synchronous and the rest is handed on as it is.
struct HTTPResponseHeadParser {
    enum Result {
        case needMoreData
        case head(HTTPResponseHead, rest: ByteBuffer)
    }

    static let maxHeadSize = 16 << 10
    private var buffer: ByteBuffer?

    mutating func append(_ bytes: ByteBuffer) throws(WebSocketUpgradeError) -> Result {
        if buffer == nil {
            buffer = bytes
        } else {
            var more = bytes
            buffer!.writeBuffer(&more)
        }
        let view = buffer!.readableBytesView
        guard let end = Self.endOfHead(view) else {
            if view.count > Self.maxHeadSize { throw .invalidResponse("the answer's HTTP head is larger than 16 KiB") }
            return .needMoreData
        }
        let headText = String(decoding: view[view.startIndex..<end], as: UTF8.self)
        var rest = buffer!
        rest.moveReaderIndex(to: end + 4)
        buffer = nil
        return .head(try Self.parse(headText), rest: rest)
    }

    private static func endOfHead(_ view: ByteBufferView) -> Int? {
        var i = view.startIndex
        while i + 3 < view.endIndex {
            if view[i] == 0x0D && view[i + 1] == 0x0A && view[i + 2] == 0x0D && view[i + 3] == 0x0A { return i }
            i += 1
        }
        return nil
    }

    static func parse(_ text: String) throws(WebSocketUpgradeError) -> HTTPResponseHead {
        var lines = text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init)
        guard !lines.isEmpty else { throw .invalidResponse("an empty answer") }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...999).contains(code) else {
            throw .invalidResponse("the answer is not HTTP: \(statusLine.prefix(80))")
        }
        let minor = parts[0] == "HTTP/1.0" ? 0 : 1
        var headers = HTTPHeaders()
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else {
                throw .invalidResponse("a malformed header line in the answer: \(line.prefix(80))")
            }
            headers.add(name: String(line[..<colon]).trimmingCharacters(in: .whitespaces),
                        value: String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
        }
        let reason = parts.count > 2 ? String(parts[2]) : ""
        return HTTPResponseHead(version: .init(major: 1, minor: minor),
                                status: HTTPResponseStatus(statusCode: code, reasonPhrase: reason), headers: headers)
    }
}
