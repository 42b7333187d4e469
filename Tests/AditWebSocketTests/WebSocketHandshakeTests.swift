import AditWebSocket
import NIOHTTP1
import Testing

@Suite struct WebSocketHandshakeTests {
    let tunnelOnly = [WebSocketRoute.tunnel(path: "/")]
    let withRaw = [WebSocketRoute.tunnel(path: "/"), WebSocketRoute(path: "/vnc", kind: .raw, subprotocols: ["binary"])]

    func request(path: String = "/", protocols: String? = "adit.v1", upgrade: Bool = true,
                 key: String = "dGhlIHNhbXBsZSBub25jZQ==", version: String = "13", extensions: String? = nil) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: "example")
        if upgrade {
            headers.add(name: "Upgrade", value: "websocket")
            headers.add(name: "Connection", value: "keep-alive, Upgrade")
            headers.add(name: "Sec-WebSocket-Key", value: key)
            headers.add(name: "Sec-WebSocket-Version", value: version)
        }
        if let protocols { headers.add(name: "Sec-WebSocket-Protocol", value: protocols) }
        if let extensions { headers.add(name: "Sec-WebSocket-Extensions", value: extensions) }
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: headers)
    }

    /// RFC 6455 §1.3's example key and answer.
    @Test func acceptValueMatchesTheRFC() {
        #expect(WebSocketHandshake.acceptValue(forKey: "dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    }

    func upgrade(_ head: HTTPRequestHead, routes: [WebSocketRoute]) -> WebSocketUpgrade? {
        if case .upgrade(let upgrade) = WebSocketHandshake.evaluate(request: head, routes: routes) { return upgrade }
        return nil
    }

    @Test func goodRequestIsUpgradedWithTheSubprotocol() throws {
        let decision = try #require(upgrade(request(protocols: "chat, adit.v1"), routes: tunnelOnly))
        #expect(decision.accept == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        #expect(decision.subprotocol == "adit.v1")
        #expect(decision.route == 0)
        #expect(decision.deflate == nil)  // not offered
    }

    @Test func rawRoutesTakeBinaryOrNoSubprotocol() throws {
        let binary = try #require(upgrade(request(path: "/vnc", protocols: "binary, base64"), routes: withRaw))
        #expect(binary.route == 1)
        #expect(binary.subprotocol == "binary")
        let none = try #require(upgrade(request(path: "/vnc", protocols: nil), routes: withRaw))
        #expect(none.subprotocol == nil)
        guard case .refuse(let status, let text, _) = WebSocketHandshake.evaluate(
            request: request(path: "/vnc", protocols: "base64"), routes: withRaw) else {
            Issue.record("a raw route accepted only base64")
            return
        }
        #expect(status == .badRequest)
        #expect(text.contains("binary"))
        // The tunnel's own path still requires adit.v1.
        #expect(upgrade(request(path: "/", protocols: "binary"), routes: withRaw) == nil)
    }

    @Test func serverNegotiatesPermessageDeflateFromTheOffer() throws {
        let offered = try #require(upgrade(
            request(extensions: "x-unknown, permessage-deflate; client_max_window_bits; server_max_window_bits=10"),
            routes: tunnelOnly))
        #expect(offered.extensionResponse?.offer.headerValue == "permessage-deflate; server_max_window_bits=10")
        #expect(offered.deflate?.compressWindowBits == 10)
        #expect(offered.deflate?.decompressWindowBits == 15)
        // A malformed header declines the extension, not the connection.
        let malformed = try #require(upgrade(request(extensions: "permessage-deflate; =="), routes: tunnelOnly))
        #expect(malformed.deflate == nil)
        #expect(malformed.extensionResponse == nil)
        // Compression off: never accepted.
        var off = CompressionSettings()
        off.mode = .off
        let declined = try #require(upgrade(request(extensions: "permessage-deflate"),
                                            routes: [.tunnel(path: "/", compression: off)]))
        #expect(declined.deflate == nil)
    }

    @Test func refusals() {
        func status(_ head: HTTPRequestHead, path: String = "/") -> (UInt, String)? {
            if case .refuse(let s, let text, _) = WebSocketHandshake.evaluate(request: head, routes: [.tunnel(path: path)]) {
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
        var config = WebSocketClientConfiguration(hostHeader: "h")
        config.compression.mode = .off
        #expect(try WebSocketHandshake.validate(response: response(accept: accept), key: key, configuration: config) == nil)
        #expect(throws: WebSocketUpgradeError.self) {
            try WebSocketHandshake.validate(response: response(accept: "wrong"), key: key, configuration: config)
        }
        #expect(throws: WebSocketUpgradeError.subprotocolNotSelected("")) {
            try WebSocketHandshake.validate(response: response(accept: accept, protocolHeader: nil), key: key, configuration: config)
        }
        // Not offered (compression off), so an extension in the answer fails the connection.
        #expect(throws: WebSocketUpgradeError.self) {
            try WebSocketHandshake.validate(response: response(accept: accept, extensions: "permessage-deflate"),
                                            key: key, configuration: config)
        }
        let notFound = HTTPResponseHead(version: .http1_1, status: .notFound)
        #expect(throws: WebSocketUpgradeError.unexpectedStatus(404, "Not Found", body: "")) {
            try WebSocketHandshake.validate(response: notFound, key: key, configuration: config)
        }
    }

    @Test func clientTakesTheServersDeflateAnswerOrFailsOnWhatItDidNotOffer() throws {
        let key = WebSocketHandshake.makeKey()
        let accept = WebSocketHandshake.acceptValue(forKey: key)
        let config = WebSocketClientConfiguration(hostHeader: "h")  // offers permessage-deflate; client_max_window_bits
        let agreed = try WebSocketHandshake.validate(
            response: response(accept: accept, extensions: "permessage-deflate; client_max_window_bits=9; server_no_context_takeover"),
            key: key, configuration: config)
        #expect(agreed == PerMessageDeflateAgreement(compressWindowBits: 9, decompressWindowBits: 15,
                                                     compressNoContextTakeover: false, decompressNoContextTakeover: true))
        #expect(try WebSocketHandshake.validate(response: response(accept: accept), key: key, configuration: config) == nil)
        for bad in ["x-webkit-deflate-frame", "permessage-deflate; foo", "permessage-deflate, permessage-deflate",
                    "permessage-deflate; client_max_window_bits"] {
            #expect(throws: WebSocketUpgradeError.self, "answer \(bad)") {
                try WebSocketHandshake.validate(response: response(accept: accept, extensions: bad), key: key,
                                                configuration: config)
            }
        }
    }

    @Test func rawClientAcceptsBinaryOrNoSubprotocol() throws {
        let key = WebSocketHandshake.makeKey()
        let accept = WebSocketHandshake.acceptValue(forKey: key)
        var config = WebSocketClientConfiguration(hostHeader: "h")
        config.subprotocols = ["binary"]
        config.requiresSubprotocol = false
        _ = try WebSocketHandshake.validate(response: response(accept: accept, protocolHeader: nil), key: key, configuration: config)
        _ = try WebSocketHandshake.validate(response: response(accept: accept, protocolHeader: "binary"), key: key, configuration: config)
        #expect(throws: WebSocketUpgradeError.self) {
            try WebSocketHandshake.validate(response: response(accept: accept, protocolHeader: "base64"), key: key,
                                            configuration: config)
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
        #expect(head.headers["Sec-WebSocket-Extensions"] == ["permessage-deflate; client_max_window_bits"])
        config.compression.windowBits = 11
        config.compression.noContextTakeover = true
        #expect(WebSocketHandshake.requestHead(configuration: config, key: "k").headers["Sec-WebSocket-Extensions"] == [
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11; client_max_window_bits=11",
        ])
        config.compression.mode = .off
        #expect(WebSocketHandshake.requestHead(configuration: config, key: "k").headers["Sec-WebSocket-Extensions"].isEmpty)
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
