import Crypto
import Foundation
import NIOHTTP1

/// The opening handshake of RFC 6455 §4 as pure functions: what the client sends, how the server judges it,
/// how the client judges the answer. The handlers only move bytes.
public enum WebSocketHandshake {
    static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

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
    public enum ServerDecision: Equatable, Sendable {
        /// Switch protocols, selecting this subprotocol.
        case upgrade(accept: String, subprotocol: String)
        /// Answer with this status and a short plain-text body, then close.
        case refuse(HTTPResponseStatus, String, extraHeaders: [(String, String)])

        public static func == (lhs: ServerDecision, rhs: ServerDecision) -> Bool {
            switch (lhs, rhs) {
            case (.upgrade(let a, let b), .upgrade(let c, let d)): return a == c && b == d
            case (.refuse(let a, let b, _), .refuse(let c, let d, _)): return a == c && b == d
            default: return false
            }
        }
    }

    public static func evaluate(request head: HTTPRequestHead, path: String, subprotocol: String) -> ServerDecision {
        let requestPath = String(head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first ?? "")
        let upgradeTokens = tokens(head.headers, "Upgrade").map { $0.lowercased() }
        let connectionTokens = tokens(head.headers, "Connection").map { $0.lowercased() }
        let isUpgrade = upgradeTokens.contains("websocket") && connectionTokens.contains("upgrade")

        guard isUpgrade else {
            return .refuse(.upgradeRequired,
                           "This is an Adit tunnel server. It speaks WebSocket (subprotocol \(subprotocol)) on \(path); "
                               + "connect with: adit client ws://HOST:PORT\(path) -L PORT:TARGET:TARGETPORT\n",
                           extraHeaders: [("Upgrade", "websocket")])
        }
        guard requestPath == path else {
            return .refuse(.notFound, "No WebSocket endpoint at \(requestPath); this server listens on \(path).\n",
                           extraHeaders: [])
        }
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
        let offered = tokens(head.headers, "Sec-WebSocket-Protocol")
        guard offered.contains(subprotocol) else {
            let what = offered.isEmpty ? "none" : offered.joined(separator: ", ")
            return .refuse(.badRequest,
                           "This server requires the WebSocket subprotocol \(subprotocol) (offered: \(what)). "
                               + "Use adit client to connect.\n",
                           extraHeaders: [])
        }
        return .upgrade(accept: acceptValue(forKey: key), subprotocol: subprotocol)
    }

    // MARK: Client side

    public static func requestHead(configuration: WebSocketClientConfiguration, key: String) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: configuration.hostHeader)
        headers.add(name: "Upgrade", value: "websocket")
        headers.add(name: "Connection", value: "Upgrade")
        headers.add(name: "Sec-WebSocket-Key", value: key)
        headers.add(name: "Sec-WebSocket-Version", value: "13")
        headers.add(name: "Sec-WebSocket-Protocol", value: configuration.subprotocol)
        if let origin = configuration.origin { headers.add(name: "Origin", value: origin) }
        for (name, value) in configuration.extraHeaders { headers.replaceOrAdd(name: name, value: value) }
        return HTTPRequestHead(version: .http1_1, method: .GET, uri: configuration.path, headers: headers)
    }

    /// Checks a 101 answer against what we asked. We offer no extension, so any extension is an error.
    public static func validate(response head: HTTPResponseHead, key: String, subprotocol: String) throws(WebSocketUpgradeError) {
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
        guard selected == [subprotocol] else {
            throw .subprotocolNotSelected(selected.joined(separator: ", "))
        }
        let extensions = tokens(head.headers, "Sec-WebSocket-Extensions")
        guard extensions.isEmpty else {
            throw .invalidResponse("the server enabled extensions we did not offer: \(extensions.joined(separator: ", "))")
        }
    }
}

/// What the client puts in its upgrade request.
public struct WebSocketClientConfiguration: Sendable {
    public var hostHeader: String
    public var path: String = "/"
    public var origin: String?
    public var extraHeaders: [(String, String)] = []
    public var subprotocol: String = "adit.v1"
    public var handshakeTimeoutSeconds: Int64 = 10

    public init(hostHeader: String) {
        self.hostHeader = hostHeader
    }
}

