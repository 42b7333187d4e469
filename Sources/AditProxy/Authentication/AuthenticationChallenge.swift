/// One challenge of a `Proxy-Authenticate` header (RFC 9110 §11): a scheme with either a token68 (NTLM and
/// Negotiate put their base64 messages there) or name=value parameters (Basic, Digest).
public struct AuthenticationChallenge: Sendable, Equatable {
    public var scheme: String
    public var token: String?
    public var parameters: [String: String]

    public init(scheme: String, token: String? = nil, parameters: [String: String] = [:]) {
        self.scheme = scheme
        self.token = token
        self.parameters = parameters
    }

    /// Parses every challenge of every `Proxy-Authenticate` header. One header may hold several challenges
    /// separated by commas, which also separate parameters: an element that starts with a bare token begins
    /// a new challenge. Scheme names are lower-cased; parameter names too.
    public static func parse(_ headerValues: [String]) -> [AuthenticationChallenge] {
        var challenges: [AuthenticationChallenge] = []
        for value in headerValues {
            for element in splitElements(value) {
                let trimmed = element.trimmingSpaces
                guard !trimmed.isEmpty else { continue }
                if let (name, paramValue) = parameter(trimmed), !challenges.isEmpty {
                    challenges[challenges.count - 1].parameters[name] = paramValue
                    continue
                }
                // A new challenge: scheme, then optionally a token68 or a first parameter.
                let scheme = trimmed.prefix { $0 != " " && $0 != "\t" }
                let rest = trimmed.dropFirst(scheme.count).trimmingSpaces
                var challenge = AuthenticationChallenge(scheme: scheme.lowercased())
                if !rest.isEmpty {
                    if let (name, paramValue) = parameter(rest) {
                        challenge.parameters[name] = paramValue
                    } else {
                        challenge.token = rest
                    }
                }
                challenges.append(challenge)
            }
        }
        return challenges
    }

    /// `name=value` or `name="quoted value"`; nil for a token68 (which may end in `=` padding only).
    private static func parameter(_ text: String) -> (String, String)? {
        guard let equals = text.firstIndex(of: "=") else { return nil }
        let name = text[..<equals].trimmingSpaces
        var value = text[text.index(after: equals)...].trimmingSpaces
        guard !name.isEmpty, !name.contains(" "), !value.isEmpty || text.last != "=" else { return nil }
        // "abc==" is a token68 with padding, not a parameter named abc.
        if value.allSatisfy({ $0 == "=" }) { return nil }
        if value.hasPrefix("\"") && value.hasSuffix("\"") && value.count >= 2 {
            value = unescape(String(value.dropFirst().dropLast()))
        }
        return (name.lowercased(), value)
    }

    private static func unescape(_ text: String) -> String {
        var out = ""
        var escaped = false
        for ch in text {
            if escaped {
                out.append(ch)
                escaped = false
            } else if ch == "\\" {
                escaped = true
            } else {
                out.append(ch)
            }
        }
        return out
    }

    /// Splits at commas outside quoted strings.
    private static func splitElements(_ value: String) -> [String] {
        var elements: [String] = []
        var current = ""
        var inQuotes = false
        var escaped = false
        for ch in value {
            if escaped {
                current.append(ch)
                escaped = false
                continue
            }
            switch ch {
            case "\\" where inQuotes:
                escaped = true
                current.append(ch)
            case "\"":
                inQuotes.toggle()
                current.append(ch)
            case "," where !inQuotes:
                elements.append(current)
                current = ""
            default:
                current.append(ch)
            }
        }
        elements.append(current)
        return elements
    }
}

extension StringProtocol {
    var trimmingSpaces: String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" { s = s.dropFirst() }
        while let l = s.last, l == " " || l == "\t" { s = s.dropLast() }
        return String(s)
    }
}
