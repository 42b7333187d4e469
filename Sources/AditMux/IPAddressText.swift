/// Parsing and printing of IP address literals without a resolver, so targets and policy patterns compare
/// addresses as numbers ("::1" and "0:0::1" are the same host).
public enum IPAddressText {
    public static func parseIPv4(_ text: String) -> UInt32? {
        let parts = text.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 4 else { return nil }
        var value: UInt32 = 0
        for part in parts {
            guard !part.isEmpty, part.count <= 3, part.allSatisfy({ $0.isASCII && $0.isNumber }),
                let octet = UInt32(part), octet <= 255
            else { return nil }
            value = value << 8 | octet
        }
        return value
    }

    public static func formatIPv4(_ value: UInt32) -> String {
        "\(value >> 24).\(value >> 16 & 0xFF).\(value >> 8 & 0xFF).\(value & 0xFF)"
    }

    /// Parses RFC 4291 text forms, including "::" compression and an embedded IPv4 tail. Returns 16 bytes.
    public static func parseIPv6(_ text: String) -> [UInt8]? {
        var chars = Array(text.utf8)
        if let percent = chars.firstIndex(of: UInt8(ascii: "%")) { chars = Array(chars[..<percent]) }  // zone index
        guard chars.contains(UInt8(ascii: ":")) else { return nil }
        var gap: Int? = nil
        for i in 0..<max(0, chars.count - 1) where chars[i] == UInt8(ascii: ":") && chars[i + 1] == UInt8(ascii: ":") {
            guard gap == nil else { return nil }  // "::" may appear once
            gap = i
        }
        func groups(_ s: ArraySlice<UInt8>) -> [UInt16]? {
            if s.isEmpty { return [] }
            var out: [UInt16] = []
            let fields = s.split(separator: UInt8(ascii: ":"), omittingEmptySubsequences: false)
            for (i, f) in fields.enumerated() {
                let field = String(decoding: f, as: UTF8.self)
                if i == fields.count - 1, f.contains(UInt8(ascii: ".")), let v4 = parseIPv4(field) {
                    out.append(UInt16(v4 >> 16))
                    out.append(UInt16(v4 & 0xFFFF))
                    continue
                }
                guard (1...4).contains(f.count), let g = UInt16(field, radix: 16) else { return nil }
                out.append(g)
            }
            return out
        }
        var all: [UInt16]
        if let gap {
            guard let head = groups(chars[..<gap]), let tail = groups(chars[(gap + 2)...]),
                head.count + tail.count <= 7
            else { return nil }
            all = head + Array(repeating: 0, count: 8 - head.count - tail.count) + tail
        } else {
            guard let g = groups(chars[...]), g.count == 8 else { return nil }
            all = g
        }
        return all.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xFF)] }
    }

    public static func formatIPv6(_ bytes: [UInt8]) -> String {
        precondition(bytes.count == 16)
        let groups = (0..<8).map { UInt16(bytes[2 * $0]) << 8 | UInt16(bytes[2 * $0 + 1]) }
        // Compress the longest run of two or more zero groups (RFC 5952).
        var bestStart = -1, bestLen = 0, i = 0
        while i < 8 {
            if groups[i] == 0 {
                var j = i
                while j < 8 && groups[j] == 0 { j += 1 }
                if j - i > bestLen && j - i >= 2 { bestStart = i; bestLen = j - i }
                i = j
            } else {
                i += 1
            }
        }
        func hex(_ range: Range<Int>) -> String { range.map { String(groups[$0], radix: 16) }.joined(separator: ":") }
        if bestStart < 0 { return hex(0..<8) }
        return hex(0..<bestStart) + "::" + hex((bestStart + bestLen)..<8)
    }
}
