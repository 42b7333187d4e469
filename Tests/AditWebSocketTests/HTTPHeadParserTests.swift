import AditTransport
import NIOCore
import Testing

/// The hand-written HTTP/1.x head parsers in front of every upgrade and proxy answer.
@Suite struct HTTPHeadParserTests {
    func request(_ text: [UInt8]) throws -> HTTPRequestHeadParser.Result {
        var parser = HTTPRequestHeadParser()
        return try parser.append(ByteBufferAllocator().buffer(bytes: text))
    }

    func response(_ text: [UInt8]) throws -> HTTPResponseHeadParser.Result {
        var parser = HTTPResponseHeadParser()
        return try parser.append(ByteBufferAllocator().buffer(bytes: text))
    }

    /// Found by fuzzing: a non-ASCII header name reached HTTPHeaders.add, whose precondition trapped, and one
    /// request took the server down. Every name that is not an RFC 9110 token is a parse error now.
    @Test(arguments: [Array("X-\u{e9}".utf8), Array("Bad Name".utf8), [0x58, 0x00, 0x59], Array("a\"b".utf8), Array("".utf8)])
    func headerNamesThatAreNotTokensAreRefused(_ name: [UInt8]) {
        let head = Array("GET / HTTP/1.1\r\nHost: x\r\n".utf8) + name + Array(": 1\r\n\r\n".utf8)
        #expect(throws: HTTPResponseParseError.self) { try request(head) }
        let answer = Array("HTTP/1.1 407 Auth\r\n".utf8) + name + Array(": 1\r\n\r\n".utf8)
        #expect(throws: HTTPResponseParseError.self) { try response(answer) }
    }

    @Test func tokenNamesAndUTF8ValuesParse() throws {
        let head = Array("GET /t HTTP/1.1\r\nHost: x\r\nX-Weird!#$%&'*+-.^_`|~1: caf\u{e9}\r\nsec-websocket-key : k\r\n\r\nrest".utf8)
        guard case .head(let parsed, let rest) = try request(head) else {
            Issue.record("no head")
            return
        }
        #expect(parsed.headers["X-Weird!#$%&'*+-.^_`|~1"] == ["caf\u{e9}"])
        #expect(parsed.headers["Sec-WebSocket-Key"] == ["k"])
        #expect(rest.readableBytes == 4)
    }
}
