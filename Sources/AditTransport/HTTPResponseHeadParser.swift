import Foundation
import NIOCore
import NIOHTTP1

/// Reads HTTP/1.x responses from raw bytes — the head, then the body framed by Content-Length, chunked
/// encoding or the end of the connection — keeping whatever follows untouched.
///
/// The WebSocket client handshake and the proxy CONNECT exchange parse their answers with this rather than
/// NIO's `HTTPResponseDecoder`: that decoder leaves the pipeline only a loop tick after it is asked to, at end
/// of input it parses the bytes after a 101 as HTTP, and told that a request was CONNECT it takes the body of
/// a 407 for a new response. Here the switch to the next protocol is synchronous and its bytes are handed on
/// as they are.
public struct HTTPResponseHeadParser: Sendable {
    public enum Result {
        case needMoreData
        case head(HTTPResponseHead, rest: ByteBuffer)
    }

    private var buffer: ByteBuffer?

    public init() {}

    public mutating func append(_ bytes: ByteBuffer) throws(HTTPResponseParseError) -> Result {
        guard let (lines, rest) = try HTTPHeadScanner.take(bytes, into: &buffer) else { return .needMoreData }
        return .head(try Self.parse(lines), rest: rest)
    }

    static func parse(_ lines: [String]) throws(HTTPResponseParseError) -> HTTPResponseHead {
        var lines = lines
        guard !lines.isEmpty else { throw HTTPResponseParseError("an empty answer") }
        let statusLine = lines.removeFirst()
        let parts = statusLine.split(separator: " ", maxSplits: 2, omittingEmptySubsequences: false)
        guard parts.count >= 2, parts[0].hasPrefix("HTTP/1."), let code = Int(parts[1]), (100...999).contains(code) else {
            throw HTTPResponseParseError("it starts with \"\(statusLine.prefix(60))\"")
        }
        let minor = parts[0] == "HTTP/1.0" ? 0 : 1
        let reason = parts.count > 2 ? String(parts[2]) : ""
        return HTTPResponseHead(version: .init(major: 1, minor: minor),
                                status: HTTPResponseStatus(statusCode: code, reasonPhrase: reason),
                                headers: try HTTPHeadScanner.headers(lines))
    }
}

/// What the request and response head parsers share: finding the end of a head, and its header lines.
enum HTTPHeadScanner {
    static let maxHeadSize = 16 << 10

    /// Appends `bytes` to `buffer`; once a whole head is there, returns its lines and what follows it.
    static func take(_ bytes: ByteBuffer, into buffer: inout ByteBuffer?) throws(HTTPResponseParseError)
        -> (lines: [String], rest: ByteBuffer)?
    {
        if buffer == nil {
            buffer = bytes
        } else {
            var more = bytes
            buffer!.writeBuffer(&more)
        }
        let view = buffer!.readableBytesView
        guard let end = endOfHead(view) else {
            if view.count > maxHeadSize { throw HTTPResponseParseError("the HTTP head is larger than 16 KiB") }
            return nil
        }
        let text = String(decoding: view[view.startIndex..<end], as: UTF8.self)
        var rest = buffer!
        rest.moveReaderIndex(to: end + 4)
        buffer = nil
        return (text.split(separator: "\r\n", omittingEmptySubsequences: false).map(String.init), rest)
    }

    private static func endOfHead(_ view: ByteBufferView) -> Int? {
        var i = view.startIndex
        while i + 3 < view.endIndex {
            if view[i] == 0x0D && view[i + 1] == 0x0A && view[i + 2] == 0x0D && view[i + 3] == 0x0A { return i }
            i += 1
        }
        return nil
    }

    static func headers(_ lines: [String]) throws(HTTPResponseParseError) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for line in lines where !line.isEmpty {
            guard let colon = line.firstIndex(of: ":") else {
                throw HTTPResponseParseError("a malformed header line: \(line.prefix(80))")
            }
            let name = String(line[..<colon]).trimmingCharacters(in: .whitespaces)
            // A field name is an RFC 9110 token. Checked here, not left to HTTPHeaders.add: its precondition
            // (ASCII names) traps, and one request with a non-ASCII header name took the whole server down
            // (found by the http-request-head fuzz target).
            guard !name.isEmpty, name.utf8.allSatisfy(isTokenByte) else {
                throw HTTPResponseParseError("a header name HTTP does not allow: \(LogText.bounded(name, limit: 80))")
            }
            headers.add(name: name, value: String(line[line.index(after: colon)...]).trimmingCharacters(in: .whitespaces))
        }
        return headers
    }

    /// tchar (RFC 9110 §5.6.2): letters, digits and !#$%&'*+-.^_`|~
    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return Array("!#$%&'*+-.^_`|~".utf8).contains(byte)
        }
    }
}

/// An answer that is not HTTP/1.x, with what was wrong.
public struct HTTPResponseParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public var detail: String
    public init(_ detail: String) { self.detail = detail }
    public var description: String { detail }
}

/// The body of a response, read to its end: by Content-Length, chunked encoding, or the end of the
/// connection. Keeps the first bytes (for a reason to show) and hands back what follows the body.
public struct HTTPBodyReader: Sendable {
    enum Framing: Sendable {
        case none
        case length(Int)
        case chunked(ChunkState)
        case untilClose
    }

    enum ChunkState: Sendable {
        case size
        case data(Int)
        case dataEnd
        case trailers
    }

    private var framing: Framing
    private var pending = ByteBuffer()
    public private(set) var start = ""
    public private(set) var finished = false

    /// `noBody`: the status or the request rules a body out (1xx, 204, 304, a 2xx to CONNECT).
    public init(head: HTTPResponseHead, noBody: Bool) {
        if noBody {
            framing = .none
            finished = true
        } else if head.headers["Transfer-Encoding"].contains(where: { $0.lowercased().contains("chunked") }) {
            framing = .chunked(.size)
        } else if let length = head.headers["Content-Length"].first.flatMap({ Int($0.trimmingCharacters(in: .whitespaces)) }) {
            framing = .length(length)
            finished = length == 0
        } else {
            framing = .untilClose
        }
    }

    /// Whether the body can only end with the connection.
    public var endsWithConnection: Bool {
        if case .untilClose = framing { return true }
        return false
    }

    /// Consumes body bytes; returns what came after the body once it is complete.
    public mutating func consume(_ bytes: ByteBuffer) throws(HTTPResponseParseError) -> ByteBuffer? {
        pending.writeImmutableBuffer(bytes)
        while !finished {
            switch framing {
            case .none:
                finished = true
            case .untilClose:
                keep(pending.readableBytes)
                pending.clear()
                return nil
            case .length(let remaining):
                let n = min(remaining, pending.readableBytes)
                keep(n)
                framing = .length(remaining - n)
                if remaining - n == 0 { finished = true } else { return nil }
            case .chunked(let state):
                switch state {
                case .size, .dataEnd, .trailers:
                    guard let line = takeLine() else { return nil }
                    switch state {
                    case .size:
                        let hex = line.split(separator: ";").first.map { $0.trimmingCharacters(in: .whitespaces) } ?? ""
                        guard let size = Int(hex, radix: 16), size >= 0 else {
                            throw HTTPResponseParseError("a bad chunk size line: \(line.prefix(40))")
                        }
                        framing = .chunked(size == 0 ? .trailers : .data(size))
                    case .dataEnd:
                        guard line.isEmpty else { throw HTTPResponseParseError("a chunk without its CRLF") }
                        framing = .chunked(.size)
                    default:
                        if line.isEmpty { finished = true }
                    }
                case .data(let remaining):
                    guard pending.readableBytes > 0 else { return nil }
                    let n = min(remaining, pending.readableBytes)
                    keep(n)
                    framing = .chunked(remaining - n == 0 ? .dataEnd : .data(remaining - n))
                }
            }
        }
        let rest = pending
        pending = ByteBuffer()
        return rest
    }

    private mutating func keep(_ n: Int) {
        if start.utf8.count < 512, let text = pending.getString(at: pending.readerIndex, length: min(n, 512)) {
            start += text
        }
        pending.moveReaderIndex(forwardBy: n)
    }

    private mutating func takeLine() -> String? {
        let view = pending.readableBytesView
        guard let cr = view.firstIndex(of: 0x0D), cr + 1 < view.endIndex, view[cr + 1] == 0x0A else {
            if view.count > 8192 { pending.clear() }
            return nil
        }
        let line = String(decoding: view[view.startIndex..<cr], as: UTF8.self)
        pending.moveReaderIndex(to: cr + 2)
        return line
    }
}
