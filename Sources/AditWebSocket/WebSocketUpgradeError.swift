/// The opening handshake failed; each case reads as one sentence a user can act on.
public enum WebSocketUpgradeError: Error, Sendable, Equatable, CustomStringConvertible {
    case unexpectedStatus(UInt, String, body: String)
    case invalidResponse(String)
    case subprotocolNotSelected(String)
    case closedDuringHandshake
    /// The answer did not start with `HTTP/`: another service listens there. Carries its first line.
    case notHTTP(String)
    case timedOut(Int64)

    public var description: String {
        switch self {
        case .unexpectedStatus(let code, let phrase, let body):
            let detail = body.isEmpty ? "" : ": \(body)"
            let hint: String
            switch code {
            case 200..<300: hint = " (a plain web server answered: check the host, port and path of the URL)"
            case 300..<400: hint = " (a redirect: adit does not follow it; use the address it points to)"
            case 400 where body.contains("speaks TLS"): hint = ""
            case 400, 426: hint = " (is it an Adit server of the same version?)"
            case 401: hint = " (give the server's credentials: --token-file or ADIT_TOKEN, or --user with ADIT_PASSWORD)"
            case 403: hint = " (the server refuses this client: its credentials, its Origin, or its limits)"
            case 407: hint = " (a proxy in front of the server wants credentials: see --proxy-user)"
            case 404: hint = " (check the path in the URL: it must be the server's --path, or the location a reverse proxy forwards)"
            case 500..<600: hint = " (the server, or a reverse proxy in front of it, failed)"
            default: hint = ""
            }
            return "the server answered the WebSocket upgrade with HTTP \(code) \(phrase)\(detail)\(hint)"
        case .invalidResponse(let what):
            return "the WebSocket upgrade answer is invalid: \(what)"
        case .subprotocolNotSelected(let selected):
            let got = selected.isEmpty ? "none" : selected
            return "the server did not select the adit.v1 subprotocol (it selected \(got)); is it an Adit server?"
        case .notHTTP(let start):
            return "the server's answer is not HTTP (it began \"\(start)\"): another service listens there; check the URL's host and port"
        case .closedDuringHandshake:
            return "the server closed the connection without answering the WebSocket upgrade (is it an Adit server, and does it speak the URL's scheme, ws:// or wss://?)"
        case .timedOut(let seconds):
            return "the server did not complete the WebSocket upgrade within \(seconds) s"
        }
    }
}
