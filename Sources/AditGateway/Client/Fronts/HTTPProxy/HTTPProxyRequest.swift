import AditMux
import AditTransport
import Foundation
import NIOHTTP1

/// The decisions of the local HTTP proxy, pure: what a request asks for (a CONNECT tunnel, a forwarded
/// absolute-form request, or an error answer), how heads are rewritten on the way through, and which status a
/// failed stream becomes.
package enum HTTPProxyRequest {
    package enum Decision: Equatable {
        /// `CONNECT host:port`: a raw tunnel after `200 Connection established`.
        case connect(MuxTarget)
        /// `GET http://host[:port]/path`: the request goes to the target in origin form.
        case forward(Forward)
        /// Answer with this status and close.
        case reject(HTTPResponseStatus, String, askForCredentials: Bool)
    }

    package struct Forward: Equatable {
        package var target: MuxTarget
        package var method: HTTPMethod
        /// The head as the target receives it: origin form, hop-by-hop headers gone, `Connection: close` (one
        /// stream per request, so the target's end of the stream ends an unframed response).
        package var head: String
        package var bodyFraming: HTTPBodyFramer.Framing
        /// The client may send another request on this connection after the answer.
        package var clientKeepAlive: Bool
    }

    /// Headers that belong to one hop (RFC 9110 §7.6.1), plus the proxy's own.
    package static let hopByHop: Set<String> = ["connection", "keep-alive", "proxy-connection", "proxy-authorization",
                                        "proxy-authenticate", "te", "upgrade"]

    package static func decide(_ head: HTTPRequestHead, credentials: LocalCredentials?) -> Decision {
        if let credentials, !authorized(head.headers, credentials) {
            return .reject(.proxyAuthenticationRequired, "this proxy needs a username and password (Basic)",
                           askForCredentials: true)
        }
        if head.method == .CONNECT {
            guard let target = authorityTarget(head.uri, defaultPort: nil) else {
                return .reject(.badRequest, "CONNECT needs host:port, got '\(head.uri.prefix(100))'", askForCredentials: false)
            }
            return .connect(target)
        }
        let uri = head.uri
        guard uri.lowercased().hasPrefix("http://") else {
            if uri.lowercased().hasPrefix("https://") {
                return .reject(.badRequest, "https:// URLs go through CONNECT; configure this as an HTTP proxy for https too",
                               askForCredentials: false)
            }
            return .reject(.badRequest, "this is an HTTP proxy: send absolute URLs (GET http://host/path) or CONNECT",
                           askForCredentials: false)
        }
        let afterScheme = uri.dropFirst(7)
        let authority = afterScheme.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        var path = String(afterScheme.dropFirst(authority.count))
        if let hash = path.firstIndex(of: "#") { path = String(path[..<hash]) }
        if path.isEmpty || path.hasPrefix("?") { path = "/" + path }
        guard !authority.contains("@"), let target = authorityTarget(String(authority), defaultPort: 80) else {
            return .reject(.badRequest, "cannot read the host in '\(uri.prefix(100))'", askForCredentials: false)
        }
        let framing: HTTPBodyFramer.Framing
        do {
            framing = try HTTPBodyFramer.framing(of: head)
        } catch {
            return .reject(.badRequest, "\(error)", askForCredentials: false)
        }
        var lines = "\(head.method.rawValue) \(path) HTTP/\(head.version.major).\(head.version.minor)\r\n"
        let connectionTokens = Set(head.headers["Connection"].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        // RFC 9112 §3.2.2: the URL's authority is the Host, whatever Host the client sent.
        lines += "Host: \(authority)\r\n"
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || connectionTokens.contains(lower) || lower == "host" { continue }
            lines += "\(name): \(value)\r\n"
        }
        lines += "Connection: close\r\n\r\n"
        return .forward(Forward(target: target, method: head.method, head: lines, bodyFraming: framing,
                                clientKeepAlive: keepAlive(head)))
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 only with `keep-alive`.
    package static func keepAlive(_ head: HTTPRequestHead) -> Bool {
        let tokens = (head.headers["Connection"] + head.headers["Proxy-Connection"]).flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        if tokens.contains("close") { return false }
        return head.version.minor >= 1 || tokens.contains("keep-alive")
    }

    package static func authorized(_ headers: HTTPHeaders, _ credentials: LocalCredentials) -> Bool {
        for value in headers["Proxy-Authorization"] {
            let parts = value.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "basic",
                let decoded = Data(base64Encoded: String(parts[1]).trimmingCharacters(in: .whitespaces)),
                let text = String(data: decoded, encoding: .utf8), let colon = text.firstIndex(of: ":")
            else { continue }
            if credentials.matches(user: String(text[..<colon]), password: String(text[text.index(after: colon)...])) {
                return true
            }
        }
        return false
    }

    /// `host:port`, `[v6]:port`, or `host` with the default port.
    package static func authorityTarget(_ authority: String, defaultPort: Int?) -> MuxTarget? {
        guard let fields = try? HostPort.splitFields(authority, what: "host"), !fields.isEmpty, !fields[0].isEmpty,
            fields[0].utf8.count <= 255, fields[0].utf8.allSatisfy({ $0 > 0x20 && $0 < 0x7F })
        else { return nil }
        let port: Int
        switch fields.count {
        case 1:
            guard let defaultPort else { return nil }
            port = defaultPort
        case 2:
            guard let p = Int(fields[1]), (1...65535).contains(p) else { return nil }
            port = p
        default:
            return nil
        }
        return MuxTarget(hostText: fields[0], port: UInt16(port))
    }

    /// The target's response head as the client receives it: hop-by-hop headers gone, our own `Connection`.
    package static func clientResponseHead(_ head: HTTPResponseHead, keepAlive: Bool) -> String {
        let connectionTokens = Set(head.headers["Connection"].flatMap { $0.split(separator: ",") }
            .map { $0.trimmingCharacters(in: .whitespaces).lowercased() })
        var text = "HTTP/\(head.version.major).\(head.version.minor) \(head.status.code) \(head.status.reasonPhrase)\r\n"
        for (name, value) in head.headers {
            let lower = name.lowercased()
            if hopByHop.contains(lower) || connectionTokens.contains(lower) { continue }
            text += "\(name): \(value)\r\n"
        }
        if head.status.code >= 200 { text += keepAlive ? "Connection: keep-alive\r\n" : "Connection: close\r\n" }
        return text + "\r\n"
    }

    /// A short plain-text answer from the proxy itself.
    package static func errorResponse(_ status: HTTPResponseStatus, _ message: String, askForCredentials: Bool) -> String {
        let body = message + "\n"
        var text = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n"
        if askForCredentials { text += "Proxy-Authenticate: Basic realm=\"adit\", charset=\"UTF-8\"\r\n" }
        text += "Content-Type: text/plain; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\n"
        text += "X-Adit-Error: \(message.replacingOccurrences(of: "\r", with: " ").replacingOccurrences(of: "\n", with: " ").prefix(200))\r\n"
        text += "Connection: close\r\n\r\n"
        return text + body
    }

    /// 403 for a denied target (the reason in the body), 502 for refused or unreachable, 504 for timed out,
    /// 503 when there is no tunnel.
    package static func status(for failure: StreamOpenFailure) -> HTTPResponseStatus {
        switch failure {
        case .notAllowed: return .forbidden
        case .refused, .unreachable, .other: return .badGateway
        case .timedOut: return .gatewayTimeout
        case .unavailable: return .serviceUnavailable
        }
    }
}
