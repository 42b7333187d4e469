import Foundation
import NIOCore
import NIOHTTP1

/// Finds where an HTTP/1.x message body ends without copying it: the proxy front passes bodies through as they
/// are and only needs to know which bytes belong to the current message (Content-Length, chunked encoding, or
/// the end of the connection) so that the next message on a kept-alive connection starts in the right place.
public struct HTTPBodyFramer: Sendable, Equatable {
    public enum Framing: Sendable, Equatable {
        case none
        case length(Int)
        case chunked
        case untilClose
    }

    private enum Chunk: Sendable, Equatable {
        /// Reading the hex size (and ignored extensions) up to LF.
        case size(value: Int, digits: Int, inExtension: Bool)
        case data(Int)
        /// The CRLF after a chunk's data.
        case dataEnd(seenCR: Bool)
        /// Trailer lines after the last chunk; `lineLength` of the current one (an empty line ends the body).
        case trailers(lineLength: Int)
    }

    public let framing: Framing
    private var remaining = 0
    private var chunk = Chunk.size(value: 0, digits: 0, inExtension: false)
    public private(set) var finished: Bool

    public init(_ framing: Framing) {
        self.framing = framing
        switch framing {
        case .none:
            finished = true
        case .length(let n):
            remaining = n
            finished = n == 0
        case .chunked, .untilClose:
            finished = false
        }
    }

    /// The body of a request (RFC 9112 §6.3): chunked, else Content-Length, else none. A Content-Length that is
    /// not a number, or differs between copies, is an error (request smuggling).
    public static func framing(of head: HTTPRequestHead) throws(HTTPResponseParseError) -> Framing {
        if let te = head.headers["Transfer-Encoding"].last {
            guard te.lowercased().split(separator: ",").last?.trimmingCharacters(in: .whitespaces) == "chunked" else {
                throw HTTPResponseParseError("a request with Transfer-Encoding '\(te)' (only chunked can frame a request)")
            }
            return .chunked
        }
        return try contentLength(head.headers).map { .length($0) } ?? .none
    }

    /// The body of a response to `method` (RFC 9112 §6.3): none for HEAD, 1xx, 204 and 304; chunked; else
    /// Content-Length; else until the connection closes.
    public static func framing(of head: HTTPResponseHead, requestMethod: HTTPMethod) throws(HTTPResponseParseError) -> Framing {
        let code = head.status.code
        if requestMethod == .HEAD || (100..<200).contains(code) || code == 204 || code == 304 { return .none }
        if head.headers["Transfer-Encoding"].contains(where: { $0.lowercased().contains("chunked") }) { return .chunked }
        return try contentLength(head.headers).map { .length($0) } ?? .untilClose
    }

    static func contentLength(_ headers: HTTPHeaders) throws(HTTPResponseParseError) -> Int? {
        let values = headers["Content-Length"].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
        guard let first = values.first else { return nil }
        guard let n = Int(first), n >= 0, values.allSatisfy({ $0 == first }) else {
            throw HTTPResponseParseError("a bad Content-Length: \(values.joined(separator: ", ").prefix(40))")
        }
        return n
    }

    /// How many of `buffer`'s readable bytes belong to this body (all of them unless it ends inside); after the
    /// body's last byte, `finished` is true.
    public mutating func scan(_ buffer: ByteBuffer) throws(HTTPResponseParseError) -> Int {
        switch framing {
        case .none:
            return 0
        case .untilClose:
            return buffer.readableBytes
        case .length:
            let n = min(remaining, buffer.readableBytes)
            remaining -= n
            if remaining == 0 { finished = true }
            return n
        case .chunked:
            return try scanChunked(buffer.readableBytesView)
        }
    }

    private mutating func scanChunked(_ view: ByteBufferView) throws(HTTPResponseParseError) -> Int {
        var i = view.startIndex
        while i < view.endIndex && !finished {
            switch chunk {
            case .size(let value, let digits, let inExtension):
                let byte = view[i]
                i += 1
                if byte == 0x0A {
                    guard digits > 0 else { throw HTTPResponseParseError("a chunk size line without a size") }
                    chunk = value == 0 ? .trailers(lineLength: 0) : .data(value)
                } else if byte == 0x0D || inExtension {
                    continue
                } else if byte == UInt8(ascii: ";") || byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") {
                    chunk = .size(value: value, digits: digits, inExtension: true)
                } else if let digit = Self.hexValue(byte), digits < 15 {
                    chunk = .size(value: value << 4 | digit, digits: digits + 1, inExtension: false)
                } else {
                    throw HTTPResponseParseError("a bad chunk size")
                }
            case .data(let left):
                let n = min(left, view.endIndex - i)
                i += n
                chunk = left - n == 0 ? .dataEnd(seenCR: false) : .data(left - n)
            case .dataEnd(let seenCR):
                let byte = view[i]
                i += 1
                if byte == 0x0D && !seenCR {
                    chunk = .dataEnd(seenCR: true)
                } else if byte == 0x0A {
                    chunk = .size(value: 0, digits: 0, inExtension: false)
                } else {
                    throw HTTPResponseParseError("a chunk without its CRLF")
                }
            case .trailers(let length):
                let byte = view[i]
                i += 1
                if byte == 0x0A {
                    if length == 0 { finished = true } else { chunk = .trailers(lineLength: 0) }
                } else if byte != 0x0D {
                    guard length < 8192 else { throw HTTPResponseParseError("a trailer line longer than 8 KiB") }
                    chunk = .trailers(lineLength: length + 1)
                }
            }
        }
        return i - view.startIndex
    }

    private static func hexValue(_ byte: UInt8) -> Int? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): return Int(byte - UInt8(ascii: "0"))
        case UInt8(ascii: "a")...UInt8(ascii: "f"): return Int(byte - UInt8(ascii: "a") + 10)
        case UInt8(ascii: "A")...UInt8(ascii: "F"): return Int(byte - UInt8(ascii: "A") + 10)
        default: return nil
        }
    }
}
