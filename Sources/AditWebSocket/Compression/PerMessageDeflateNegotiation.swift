/// What both sides agreed for permessage-deflate on one connection, from our point of view.
public struct PerMessageDeflateAgreement: Sendable, Equatable {
    /// Window bits our compressor may use. zlib's raw deflate cannot compress with 8 (a 256-byte window), so 8
    /// compresses with Huffman coding only, which uses no back-references and so honours any window.
    public var compressWindowBits: Int
    /// Window bits the peer's messages were compressed with (our inflater's window).
    public var decompressWindowBits: Int
    /// Reset our compressor after every message.
    public var compressNoContextTakeover: Bool
    /// The peer resets its compressor after every message (our inflater may reset too).
    public var decompressNoContextTakeover: Bool

    public init(compressWindowBits: Int, decompressWindowBits: Int, compressNoContextTakeover: Bool,
                decompressNoContextTakeover: Bool) {
        self.compressWindowBits = compressWindowBits
        self.decompressWindowBits = decompressWindowBits
        self.compressNoContextTakeover = compressNoContextTakeover
        self.decompressNoContextTakeover = decompressNoContextTakeover
    }
}

/// The server's wishes for permessage-deflate.
public struct PerMessageDeflatePolicy: Sendable, Equatable {
    /// Largest window our compressor uses (9–15).
    public var serverMaxWindowBits = 15
    /// Window we ask the client to limit itself to, when its offer lets us (8–15); nil leaves it alone.
    public var clientMaxWindowBits: Int? = nil
    public var serverNoContextTakeover = false
    public var clientNoContextTakeover = false

    public init() {}
}

/// RFC 7692 §7.1 negotiation, pure: the server picks among offers, the client checks the answer.
public enum PerMessageDeflateNegotiation {
    /// The server's choice: the first `permessage-deflate` offer it can honour, the response to send and the
    /// resulting agreement; nil declines (no extension in the response). Offers with bad parameters are
    /// declined one by one, as RFC 7692 §5 requires. `server_max_window_bits=8` is accepted: we compress with
    /// Huffman coding only then (see `PerMessageDeflateAgreement.compressWindowBits`).
    public static func accept(offers: [WebSocketExtensionOffer], policy: PerMessageDeflatePolicy)
        -> (response: PerMessageDeflateParameters, agreement: PerMessageDeflateAgreement)?
    {
        for offer in offers where offer.name == PerMessageDeflateParameters.extensionName {
            guard let offered = try? PerMessageDeflateParameters(offer, isResponse: false) else { continue }
            var response = PerMessageDeflateParameters()
            // Our compressor's window.
            var serverBits = min(policy.serverMaxWindowBits, 15)
            if let limit = offered.serverMaxWindowBits {
                serverBits = min(serverBits, limit)
                response.serverMaxWindowBits = serverBits
            } else if serverBits < 15 {
                response.serverMaxWindowBits = serverBits
            }
            response.serverNoContextTakeover = offered.serverNoContextTakeover || policy.serverNoContextTakeover
            response.clientNoContextTakeover = offered.clientNoContextTakeover || policy.clientNoContextTakeover
            // The client's window: we may only name one if the client offered the parameter.
            var clientBits = 15
            switch offered.clientMaxWindowBits {
            case .absent:
                break
            case .noValue:
                if let wanted = policy.clientMaxWindowBits {
                    clientBits = wanted
                    response.clientMaxWindowBits = .value(wanted)
                }
            case .value(let limit):
                clientBits = min(limit, policy.clientMaxWindowBits ?? 15)
                response.clientMaxWindowBits = .value(clientBits)
            }
            let agreement = PerMessageDeflateAgreement(
                compressWindowBits: serverBits, decompressWindowBits: clientBits,
                compressNoContextTakeover: response.serverNoContextTakeover,
                decompressNoContextTakeover: response.clientNoContextTakeover)
            return (response, agreement)
        }
        return nil
    }

    /// The client's check of the server's answer against what it offered. No extension in the answer means no
    /// compression; anything the client did not offer fails the connection (RFC 7692 §5, §7.1).
    public static func validate(response headerValues: [String], offered: PerMessageDeflateParameters)
        throws(WebSocketExtensionError) -> PerMessageDeflateAgreement?
    {
        let elements = try WebSocketExtensionOffer.parse(headerValues)
        guard !elements.isEmpty else { return nil }
        guard elements.count == 1, elements[0].name == PerMessageDeflateParameters.extensionName else {
            throw .notOffered("the extension(s) \(elements.map(\.name).joined(separator: ", "))")
        }
        let accepted = try PerMessageDeflateParameters(elements[0], isResponse: true)
        if offered.serverNoContextTakeover && !accepted.serverNoContextTakeover {
            throw .notOffered("permessage-deflate without the server_no_context_takeover it was asked for")
        }
        var serverBits = accepted.serverMaxWindowBits ?? 15
        if let limit = offered.serverMaxWindowBits {
            guard let bits = accepted.serverMaxWindowBits, bits <= limit else {
                throw .notOffered("server_max_window_bits \(accepted.serverMaxWindowBits.map(String.init) ?? "absent") above the offered \(limit)")
            }
            serverBits = bits
        }
        var clientBits = 15
        if case .value(let offeredLimit) = offered.clientMaxWindowBits { clientBits = offeredLimit }
        if case .value(let bits) = accepted.clientMaxWindowBits {
            switch offered.clientMaxWindowBits {
            case .absent:
                throw .notOffered("client_max_window_bits=\(bits)")
            case .noValue:
                clientBits = bits
            case .value(let limit):
                guard bits <= limit else { throw .notOffered("client_max_window_bits=\(bits) above the offered \(limit)") }
                clientBits = bits
            }
        }
        return PerMessageDeflateAgreement(
            compressWindowBits: clientBits, decompressWindowBits: serverBits,
            compressNoContextTakeover: accepted.clientNoContextTakeover,
            decompressNoContextTakeover: accepted.serverNoContextTakeover)
    }
}
