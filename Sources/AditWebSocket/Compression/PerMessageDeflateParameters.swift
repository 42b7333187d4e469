/// The four parameters of RFC 7692 §7.1, as one offer or one agreement. Window bits are 8–15.
public struct PerMessageDeflateParameters: Sendable, Equatable {
    /// How a `client_max_window_bits` parameter appears: absent, without a value (an offer saying "you may
    /// limit me"), or with a value.
    public enum ClientWindowBits: Sendable, Equatable {
        case absent
        case noValue
        case value(Int)
    }

    public var serverNoContextTakeover = false
    public var clientNoContextTakeover = false
    public var serverMaxWindowBits: Int? = nil
    public var clientMaxWindowBits: ClientWindowBits = .absent

    public init(serverNoContextTakeover: Bool = false, clientNoContextTakeover: Bool = false,
                serverMaxWindowBits: Int? = nil, clientMaxWindowBits: ClientWindowBits = .absent) {
        self.serverNoContextTakeover = serverNoContextTakeover
        self.clientNoContextTakeover = clientNoContextTakeover
        self.serverMaxWindowBits = serverMaxWindowBits
        self.clientMaxWindowBits = clientMaxWindowBits
    }

    public static let extensionName = "permessage-deflate"

    /// Reads the parameters of one `permessage-deflate` element, rejecting unknown names, duplicates and bad
    /// values as RFC 7692 §7.1 requires. `isResponse` applies the stricter rule for answers: there,
    /// `client_max_window_bits` must carry a value.
    public init(_ offer: WebSocketExtensionOffer, isResponse: Bool) throws(WebSocketExtensionError) {
        var seen = Set<String>()
        for parameter in offer.parameters {
            guard seen.insert(parameter.name).inserted else { throw .duplicateParameter(parameter.name) }
            switch parameter.name {
            case "server_no_context_takeover":
                guard parameter.value == nil else { throw .invalidValue(parameter.name, parameter.value) }
                serverNoContextTakeover = true
            case "client_no_context_takeover":
                guard parameter.value == nil else { throw .invalidValue(parameter.name, parameter.value) }
                clientNoContextTakeover = true
            case "server_max_window_bits":
                guard let bits = Self.windowBits(parameter.value) else { throw .invalidValue(parameter.name, parameter.value) }
                serverMaxWindowBits = bits
            case "client_max_window_bits":
                if let value = parameter.value {
                    guard let bits = Self.windowBits(value) else { throw .invalidValue(parameter.name, value) }
                    clientMaxWindowBits = .value(bits)
                } else {
                    guard !isResponse else { throw .invalidValue(parameter.name, nil) }
                    clientMaxWindowBits = .noValue
                }
            default:
                throw .unknownParameter(parameter.name)
            }
        }
    }

    /// 8–15, decimal, no leading zero or sign (RFC 7692 §7.1.2.1).
    static func windowBits(_ text: String?) -> Int? {
        guard let text, !text.isEmpty, text.count <= 2, text.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }),
            !(text.count == 2 && text.hasPrefix("0")), let bits = Int(text), (8...15).contains(bits)
        else { return nil }
        return bits
    }

    /// As a header element.
    public var offer: WebSocketExtensionOffer {
        var parameters: [WebSocketExtensionOffer.Parameter] = []
        if serverNoContextTakeover { parameters.append(.init(name: "server_no_context_takeover", value: nil)) }
        if clientNoContextTakeover { parameters.append(.init(name: "client_no_context_takeover", value: nil)) }
        if let bits = serverMaxWindowBits { parameters.append(.init(name: "server_max_window_bits", value: "\(bits)")) }
        switch clientMaxWindowBits {
        case .absent: break
        case .noValue: parameters.append(.init(name: "client_max_window_bits", value: nil))
        case .value(let bits): parameters.append(.init(name: "client_max_window_bits", value: "\(bits)"))
        }
        return WebSocketExtensionOffer(name: Self.extensionName, parameters: parameters)
    }
}
