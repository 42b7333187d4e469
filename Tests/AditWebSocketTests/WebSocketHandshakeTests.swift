import AditWebSocket
import NIOHTTP1
import Testing

@Suite struct WebSocketHandshakeTests {
    func request(path: String = "/", protocols: String? = "adit.v1", upgrade: Bool = true,
                 key: String = "dGhlIHNhbXBsZSBub25jZQ==", version: String = "13") -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "example")
        if upgrade {
            headers.add(name: "Upgrade", value: "websocket")
            headers.add(name: "Connection", value: "keep-alive, Upgrade")
            headers.add(name: "Sec-WebSocket-Key", value: key)
            headers.add(name: "Sec-WebSocket-Version", value: version)
        }
        if let protocols { headers.add(name: "Sec-WebSocket-Protocol", value: protocols) }
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
    }

    /// RFC 6455 §1.3's example key and answer.
    @Test func acceptValueMatchesTheRFC() {
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    @Test func goodRequestIsUpgradedWithTheSubprotocol() {
        let decision = WebSocketHandshake.evaluate(request: request(protocols: "chat, adit.v1"), path: "/", subprotocol: "adit.v1")
        #expect(decision == .upgrade(accept: "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", subprotocol: "adit.v1"))
    }

    @Test func refusals() {
        func status(_ head: HTTPRequestHead, path: String = "/") -> (UInt, String)? {
            if case .refuse(let s, let text, _) = WebSocketHandshake.evaluate(request: head, path: path, subprotocol: "adit.v1") {
                return (s.code, text)
            }
            return nil
        }
        let missing = status(request(protocols: nil))
        #expect(missing?.0 == 400)
        #expect(missing?.1.contains("adit.v1") == true)
        #expect(status(request(protocols: "binary"))?.0 == 400)
        #expect(status(request(upgrade: false))?.0 == 426)
        #expect(status(request(path: "/other"), path: "/tunnel")?.0 == 404)
        #expect(status(request(key: "short"))?.0 == 400)
        #expect(status(request(version: "8"))?.0 == 426)
    }

    func response(accept: String, protocolHeader: String? = "adit.v1", extensions: String? = nil) -> HTTPResponseHead {
        var headers = HTTPHeaders()
        headers.add(name: "upgrade", value: "websocket")  // lower case, as haproxy sends
        headers.add(name: "connection", value: "Upgrade")
        headers.add(name: "sec-websocket-accept", value: accept)
        if let protocolHeader { headers.add(name: "sec-websocket-protocol", value: protocolHeader) }
        if let extensions { headers.add(name: "sec-websocket-extensions", value: extensions) }
        return HTTPResponseHead(version: .http1_1, status: .switchingProtocols, headers: headers)
    }

    @Test func clientValidatesTheAnswer() throws {
        let key = WebSocketHandshake.makeKey()
        let accept = WebSocketHandshake.acceptValue(forKey: key)
        try WebSocketHandshake.validate(response: response(accept: accept), key: key, subprotocol: "adit.v1")
        #expect(throws: WebSocketUpgradeError.self) {
            try WebSocketHandshake.validate(response: response(accept: "wrong"), key: key, subprotocol: "adit.v1")
        }
        #expect(throws: WebSocketUpgradeError.subprotocolNotSelected("")) {
            try WebSocketHandshake.validate(response: response(accept: accept, protocolHeader: nil), key: key, subprotocol: "adit.v1")
        }
        #expect(throws: WebSocketUpgradeError.self) {
            try WebSocketHandshake.validate(response: response(accept: accept, extensions: "permessage-deflate"),
                                            key: key, subprotocol: "adit.v1")
        }
        let notFound = HTTPResponseHead(version: .http1_1, status: .notFound)
        #expect(throws: WebSocketUpgradeError.unexpectedStatus(404, "Not Found", body: "")) {
            try WebSocketHandshake.validate(response: notFound, key: key, subprotocol: "adit.v1")
        }
    }

    @Test func requestCarriesConfiguredHeaders() {
        var config = WebSocketClientConfiguration(hostHeader: "gw.example:8080")
        config.path = "/tunnel"
        config.origin = "https://portal.example"
        config.extraHeaders = [("X-Team", "ops"), ("User-Agent", "adit-test")]
        let head = WebSocketHandshake.requestHead(configuration: config, key: "k")
        #expect(head.uri == "/tunnel")
        #expect(head.headers["Host"] == ["gw.example:8080"])
        #expect(head.headers["Origin"] == ["https://portal.example"])
        #expect(head.headers["X-Team"] == ["ops"])
        #expect(head.headers["Sec-WebSocket-Protocol"] == ["adit.v1"])
    }

    @Test func upgradeFailuresSayWhatToCheck() {
        #expect(WebSocketUpgradeError.unexpectedStatus(200, "OK", body: "").description.contains("plain web server"))
        #expect(WebSocketUpgradeError.unexpectedStatus(302, "Found", body: "Location: https://x/").description
            .contains("Location: https://x/"))
        #expect(WebSocketUpgradeError.unexpectedStatus(404, "Not Found", body: "").description.contains("path"))
        #expect(WebSocketUpgradeError.unexpectedStatus(403, "Forbidden", body: "").description.contains("credentials"))
        #expect(WebSocketUpgradeError.unexpectedStatus(502, "Bad Gateway", body: "").description.contains("reverse proxy"))
    }
}
