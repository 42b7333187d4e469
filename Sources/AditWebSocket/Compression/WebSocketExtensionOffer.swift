/// One element of a `Sec-WebSocket-Extensions` header (RFC 6455 §9.1): a name and its parameters, in order.
/// Parsing is strict, because RFC 7692 requires failing the connection on a malformed header.
public struct WebSocketExtensionOffer: Sendable, Equatable {
    public struct Parameter: Sendable, Equatable {
        public var name: String
        public var value: String?

        public init(name: String, value: String?) {
            self.name = name
            self.value = value
        }
    }

    public var name: String
    public var parameters: [Parameter]

    public init(name: String, parameters: [Parameter] = []) {
        self.name = name
        self.parameters = parameters
    }

    /// Parses every value of the header (several headers and comma-separated lists alike) into offers.
    public static func parse(_ headerValues: [String]) throws(WebSocketExtensionError) -> [WebSocketExtensionOffer] {
        var offers: [WebSocketExtensionOffer] = []
        for value in headerValues {
            var scanner = Scanner(Array(value.utf8))
            scanner.skipSpaces()
            if scanner.atEnd { continue }
            while true {
                offers.append(try parseOne(&scanner, header: value))
                scanner.skipSpaces()
                if scanner.atEnd { break }
                guard scanner.take(UInt8(ascii: ",")) else {
                    throw .malformed(value, "expected ',' between extensions")
                }
                scanner.skipSpaces()
            }
        }
        return offers
    }

    private static func parseOne(_ scanner: inout Scanner, header: String) throws(WebSocketExtensionError) -> WebSocketExtensionOffer {
        guard let name = scanner.token() else { throw .malformed(header, "missing extension name") }
        var offer = WebSocketExtensionOffer(name: name.lowercased())
        while true {
            scanner.skipSpaces()
            guard scanner.take(UInt8(ascii: ";")) else { return offer }
            scanner.skipSpaces()
            guard let parameter = scanner.token() else { throw .malformed(header, "missing parameter name after ';'") }
            scanner.skipSpaces()
            var value: String? = nil
            if scanner.take(UInt8(ascii: "=")) {
                scanner.skipSpaces()
                if let quoted = try scanner.quotedString(header: header) {
                    // RFC 6455 §9.1: a quoted value must itself be a token once unquoted.
                    guard !quoted.isEmpty, quoted.utf8.allSatisfy(Scanner.isTokenByte) else {
                        throw .malformed(header, "quoted value \"\(quoted)\" is not a token")
                    }
                    value = quoted
                } else if let token = scanner.token() {
                    value = token
                } else {
                    throw .malformed(header, "missing value after '\(parameter)='")
                }
            }
            offer.parameters.append(Parameter(name: parameter.lowercased(), value: value))
        }
    }

    /// The header text for this offer.
    public var headerValue: String {
        ([name] + parameters.map { p in p.value.map { "\(p.name)=\($0)" } ?? p.name }).joined(separator: "; ")
    }
}

/// A tiny byte scanner for header grammar (RFC 7230 tokens and quoted strings).
struct Scanner {
    private let bytes: [UInt8]
    private var index = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var atEnd: Bool { index >= bytes.count }

    mutating func skipSpaces() {
        while index < bytes.count, bytes[index] == 0x20 || bytes[index] == 0x09 { index += 1 }
    }

    mutating func take(_ byte: UInt8) -> Bool {
        guard index < bytes.count, bytes[index] == byte else { return false }
        index += 1
        return true
    }

    static func isTokenByte(_ b: UInt8) -> Bool {
        // tchar: visible ASCII except delimiters
        guard b > 0x20, b < 0x7F else { return false }
        return !"\"(),/:;<=>?@[\\]{}".utf8.contains(b)
    }

    mutating func token() -> String? {
        let start = index
        while index < bytes.count, Scanner.isTokenByte(bytes[index]) { index += 1 }
        return index > start ? String(decoding: bytes[start..<index], as: UTF8.self) : nil
    }

    mutating func quotedString(header: String) throws(WebSocketExtensionError) -> String? {
        guard take(UInt8(ascii: "\"")) else { return nil }
        var out: [UInt8] = []
        while index < bytes.count {
            let b = bytes[index]
            index += 1
            if b == UInt8(ascii: "\"") { return String(decoding: out, as: UTF8.self) }
            if b == UInt8(ascii: "\\") {
                guard index < bytes.count else { break }
                out.append(bytes[index])
                index += 1
            } else {
                out.append(b)
            }
        }
        throw .malformed(header, "unterminated quoted string")
    }
}
