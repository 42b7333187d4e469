/// The opening handshake failed; each case reads as one sentence a user can act on.
public enum WebSocketUpgradeError: Error, Sendable, Equatable, CustomStringConvertible {
    case unexpectedStatus(UInt, String, body: String)
    case invalidResponse(String)
    case subprotocolNotSelected(String)
    case closedDuringHandshake
    case timedOut(Int64)

    public var description: String {
        switch self {
        case .unexpectedStatus(let code, let phrase, let body):
            let detail = body.isEmpty ? "" : ": \(body)"
            var hint = ""
            if code == 404 { hint = " (check the path in the URL)" }
            if code == 400 || code == 426 { hint = " (is it an Adit server of the same version?)" }
            return "the server answered the WebSocket upgrade with HTTP \(code) \(phrase)\(detail)\(hint)"
        case .invalidResponse(let what):
            return "the WebSocket upgrade answer is invalid: \(what)"
        case .subprotocolNotSelected(let selected):
            let got = selected.isEmpty ? "none" : selected
            return "the server did not select the adit.v1 subprotocol (it selected \(got)); is it an Adit server?"
        case .closedDuringHandshake:
            return "the server closed the connection during the WebSocket upgrade"
        case .timedOut(let seconds):
            return "the server did not complete the WebSocket upgrade within \(seconds) s"
        }
    }
}
