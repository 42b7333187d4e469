import Crypto
import Foundation
import NIOHTTP1

/// The opening handshake of RFC 6455 §4 as pure functions: what the client sends, how the server judges it,
/// how the client judges the answer. The handlers only move bytes.
public enum WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
    /// `Sec-WebSocket-Protocol: adit.v1, adit.bearer.<token>`: how a browser, which cannot set `Authorization`,
    /// presents a token. The token must be a valid subprotocol token (Adit's are base64url).
    public static let bearerSubprotocolPrefix = "adit.bearer."

    /// A fresh `Sec-WebSocket-Key`: 16 random bytes, base64.
    public static func makeKey() -> String {
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
        return Data(bytes).base64EncodedString()
    }

    public static func acceptValue(forKey key: String) -> String {
        let digest = Insecure.SHA1.hash(data: Data((key + guid).utf8))
        return Data(digest).base64EncodedString()
    }

    /// Tokens of a comma-separated header, trimmed, across all its occurrences.
    public static func tokens(_ headers: HTTPHeaders, _ name: String) -> [String] {
        headers[name].flatMap { $0.split(separator: ",") }.map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty }
    }

    // MARK: Server side

    /// How a server answers a request.
    public enum ServerDecision: Sendable {
        /// Switch protocols on `routes[route]`, selecting this subprotocol (nil: none) and, when agreed,
        /// permessage-deflate with these response parameters.
        case upgrade(WebSocketUpgrade)
        /// Answer with this status and a short plain-text body, then close.
        case refuse(HTTPResponseStatus, String, extraHeaders: [(String, String)])
    }

    public static func evaluate(request head: HTTPRequestHead, routes: [WebSocketRoute]) -> ServerDecision {
        let requestPath = String(head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        let upgradeTokens = tokens(head.headers, "Upgrade").map { $0.lowercased() }
        let connectionTokens = tokens(head.headers, "Connection").map { $0.lowercased() }
        let isUpgrade = upgradeTokens.contains("websocket") && connectionTokens.contains("upgrade")
        let tunnel = routes.first { $0.kind == .tunnel }

        guard isUpgrade else {
            var text = "This is an Adit tunnel server. "
            if let tunnel {
                text += "It speaks WebSocket (subprotocol \(tunnel.subprotocols.first ?? "")) on \(tunnel.path); "
                    + "connect with: adit client ws://HOST:PORT\(tunnel.path) -L PORT:TARGET:TARGETPORT\n"
            } else {
                text += "It bridges WebSocket on \(routes.map(\.path).joined(separator: ", ")) to TCP.\n"
            }
            return .refuse(.upgradeRequired, text, extraHeaders: [("Upgrade", "websocket")])
        }
        guard let routeIndex = routes.firstIndex(where: { $0.path == requestPath }) else {
            let served = routes.map(\.path).joined(separator: ", ")
            return .refuse(.notFound, "No WebSocket endpoint at \(requestPath); this server serves \(served).\n",
                           extraHeaders: [])
        }
        let route = routes[routeIndex]
        guard head.method == .GET, head.version.major > 1 || (head.version.major == 1 && head.version.minor >= 1) else {
            return .refuse(.badRequest, "A WebSocket upgrade must be a GET over HTTP/1.1.\n", extraHeaders: [])
        }
        guard head.headers["Sec-WebSocket-Version"].first?.trimmingCharacters(in: .whitespaces) == "13" else {
            return .refuse(.upgradeRequired, "Only WebSocket version 13 is supported.\n",
                           extraHeaders: [("Sec-WebSocket-Version", "13")])
        }
        guard let key = head.headers["Sec-WebSocket-Key"].first?.trimmingCharacters(in: .whitespaces),
            let raw = Data(base64Encoded: key), raw.count == 16
        else {
            return .refuse(.badRequest, "Sec-WebSocket-Key is missing or is not 16 bytes in base64.\n", extraHeaders: [])
        }
        // A bearer token may ride in the subprotocol list (browsers cannot set Authorization): it is never selected
        // and does not count as an offer.
        let offered = tokens(head.headers, "Sec-WebSocket-Protocol").filter { !$0.hasPrefix(bearerSubprotocolPrefix) }
        let selected = route.subprotocols.first { offered.contains($0) }
        switch route.kind {
        case .tunnel:
            guard let selected else {
                let what = offered.isEmpty ? "none" : offered.joined(separator: ", ")
                return .refuse(.badRequest,
                               "This server requires the WebSocket subprotocol \(route.subprotocols.joined(separator: ", ")) "
                                   + "(offered: \(what)). Use adit client to connect.\n",
                               extraHeaders: [])
            }
            _ = selected
        case .raw:
            // As websockify: binary messages with the subprotocol `binary`, or with none at all.
            if selected == nil && !offered.isEmpty {
                return .refuse(.badRequest,
                               "This endpoint carries binary messages, with the subprotocol \(route.subprotocols.joined(separator: " or ")) "
                                   + "or none (offered: \(offered.joined(separator: ", "))).\n",
                               extraHeaders: [])
            }
        }
        var deflate: (response: PerMessageDeflateParameters, agreement: PerMessageDeflateAgreement)? = nil
        if let policy = route.compression.serverPolicy {
            // A malformed header declines the extension rather than the connection (RFC 7692 §5 lets us).
            let offers = (try? WebSocketExtensionOffer.parse(head.headers["Sec-WebSocket-Extensions"])) ?? []
            deflate = PerMessageDeflateNegotiation.accept(offers: offers, policy: policy)
        }
        return .upgrade(WebSocketUpgrade(accept: acceptValue(forKey: key), route: routeIndex, subprotocol: selected,
                                         extensionResponse: deflate?.response, deflate: deflate?.agreement))
    }

    // MARK: Client side

    public static func requestHead(configuration: WebSocketClientConfiguration, key: String) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: configuration.hostHeader)
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Key", value: key)
        headers.add(name: "Sec-WebSocket-Version", value: "13")
        if !configuration.subprotocols.isEmpty {
            headers.add(name: "Sec-WebSocket-Protocol", value: configuration.subprotocols.joined(separator: ", "))
        }
        if let offer = configuration.compression.clientOffer {
            headers.add(name: "Sec-WebSocket-Extensions", value: offer.offer.headerValue)
        }
        if let origin = configuration.origin { headers.add(name: "Origin", value: origin) }
        for (name, value) in configuration.extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: configuration.path, headers: headers)
    }

    /// Checks a 101 answer against what we asked and returns the permessage-deflate agreement, if any.
    public static func validate(response head: HTTPResponseHead, key: String,
                                configuration: WebSocketClientConfiguration)
        throws(WebSocketUpgradeError) -> PerMessageDeflateAgreement?
    {
        guard head.status == .switchingProtocols else {
            throw .unexpectedStatus(head.status.code, head.status.reasonPhrase, body: "")
        }
        guard tokens(head.headers, "Upgrade").map({ $0.lowercased() }).contains("websocket") else {
            throw .invalidResponse("the 101 answer does not say Upgrade: websocket")
        }
        guard tokens(head.headers, "Connection").map({ $0.lowercased() }).contains("upgrade") else {
            throw .invalidResponse("the 101 answer does not say Connection: Upgrade")
        }
        guard head.headers["Sec-WebSocket-Accept"].first?.trimmingCharacters(in: .whitespaces) == acceptValue(forKey: key) else {
            throw .invalidResponse("Sec-WebSocket-Accept does not match our key (a proxy or server broke the handshake)")
        }
        let selected = tokens(head.headers, "Sec-WebSocket-Protocol")
        if configuration.requiresSubprotocol {
            guard selected.count == 1, configuration.subprotocols.contains(selected[0]) else {
                throw .subprotocolNotSelected(selected.joined(separator: ", "))
            }
        } else if !selected.isEmpty {
            guard selected.count == 1, configuration.subprotocols.contains(selected[0]) else {
                throw .invalidResponse("the server selected the subprotocol \(selected.joined(separator: ", ")), which we did not offer")
            }
        }
        let extensions = head.headers["Sec-WebSocket-Extensions"]
        guard let offer = configuration.compression.clientOffer else {
            let names = tokens(head.headers, "Sec-WebSocket-Extensions")
            guard names.isEmpty else {
                throw .invalidResponse("the server enabled extensions we did not offer: \(names.joined(separator: ", "))")
            }
            return nil
        }
        do {
            return try PerMessageDeflateNegotiation.validate(response: extensions, offered: offer)
        } catch {
            throw .invalidResponse("the server's Sec-WebSocket-Extensions answer is not acceptable: \(error)")
        }
    }
}

/// One WebSocket endpoint of a server.
public struct WebSocketRoute: Sendable {
    public enum Kind: Sendable, Equatable {
        /// The multiplexed tunnel: the subprotocol is required.
        case tunnel
        /// A raw bridge: one of `subprotocols` or none.
        case raw
    }

    public var path: String
    public var kind: Kind
    public var subprotocols: [String]
    public var compression: CompressionSettings

    public init(path: String, kind: Kind, subprotocols: [String], compression: CompressionSettings = .init()) {
        self.path = path
        self.kind = kind
        self.subprotocols = subprotocols
        self.compression = compression
    }

    public static func tunnel(path: String, compression: CompressionSettings = .init()) -> WebSocketRoute {
        WebSocketRoute(path: path, kind: .tunnel, subprotocols: ["adit.v1"], compression: compression)
    }
}

/// What a server agreed to in its 101 answer.
public struct WebSocketUpgrade: Sendable, Equatable {
    public var accept: String
    /// Index into the routes the request was evaluated against.
    public var route: Int
    public var subprotocol: String?
    public var extensionResponse: PerMessageDeflateParameters?
    public var deflate: PerMessageDeflateAgreement?
}

/// What the client puts in its upgrade request.
public struct WebSocketClientConfiguration: Sendable {
    public var hostHeader: String
    public var path: String = "/"
    public var origin: String?
    public var extraHeaders: [(String, String)] = []
    /// Offered in this order.
    public var subprotocols: [String] = ["adit.v1"]
    /// The server must select one of `subprotocols` (the tunnel); otherwise it may select none (a raw bridge).
    public var requiresSubprotocol = true
    public var compression = CompressionSettings()
    public var handshakeTimeoutSeconds: Int64 = 10

    public init(hostHeader: String) {
        self.hostHeader = hostHeader
    }
}

