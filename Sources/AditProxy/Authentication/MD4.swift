/// MD4 (RFC 1320), needed for the NT hash of NTLM and nothing else: swift-crypto and the system's OpenSSL 3
/// (default provider) no longer offer it, because it is broken as a hash. NTLM still needs it.
public enum MD4 {
    public static func hash<Bytes: Collection>(_ input: Bytes) -> [UInt8] where Bytes.Element == UInt8 {
        var message = Array(input)
        let bitLength = UInt64(message.count) &* 8
        message.append(0x80)
        while message.count % 64 != 56 { message.append(0) }
        for i in 0..<8 { message.append(UInt8(truncatingIfNeeded: bitLength >> (8 * UInt64(i)))) }

        var a: UInt32 = 0x6745_2301, b: UInt32 = 0xEFCD_AB89, c: UInt32 = 0x98BA_DCFE, d: UInt32 = 0x1032_5476
        var x = [UInt32](repeating: 0, count: 16)
        for block in stride(from: 0, to: message.count, by: 64) {
            for i in 0..<16 {
                let o = block + 4 * i
                x[i] = UInt32(message[o]) | UInt32(message[o + 1]) << 8 | UInt32(message[o + 2]) << 16 | UInt32(message[o + 3]) << 24
            }
            let (aa, bb, cc, dd) = (a, b, c, d)
            func rotl(_ v: UInt32, _ s: UInt32) -> UInt32 { (v << s) | (v >> (32 - s)) }
            func f(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { (x & y) | (~x & z) }
            func g(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { (x & y) | (x & z) | (y & z) }
            func h(_ x: UInt32, _ y: UInt32, _ z: UInt32) -> UInt32 { x ^ y ^ z }
            // Round 1
            for i in stride(from: 0, to: 16, by: 4) {
                a = rotl(a &+ f(b, c, d) &+ x[i], 3)
                d = rotl(d &+ f(a, b, c) &+ x[i + 1], 7)
                c = rotl(c &+ f(d, a, b) &+ x[i + 2], 11)
                b = rotl(b &+ f(c, d, a) &+ x[i + 3], 19)
            }
            // Round 2
            for i in 0..<4 {
                a = rotl(a &+ g(b, c, d) &+ x[i] &+ 0x5A82_7999, 3)
                d = rotl(d &+ g(a, b, c) &+ x[i + 4] &+ 0x5A82_7999, 5)
                c = rotl(c &+ g(d, a, b) &+ x[i + 8] &+ 0x5A82_7999, 9)
                b = rotl(b &+ g(c, d, a) &+ x[i + 12] &+ 0x5A82_7999, 13)
            }
            // Round 3
            for i in [0, 2, 1, 3] {
                a = rotl(a &+ h(b, c, d) &+ x[i] &+ 0x6ED9_EBA1, 3)
                d = rotl(d &+ h(a, b, c) &+ x[i + 8] &+ 0x6ED9_EBA1, 9)
                c = rotl(c &+ h(d, a, b) &+ x[i + 4] &+ 0x6ED9_EBA1, 11)
                b = rotl(b &+ h(c, d, a) &+ x[i + 12] &+ 0x6ED9_EBA1, 15)
            }
            a = a &+ aa
            b = b &+ bb
            c = c &+ cc
            d = d &+ dd
        }
        var out: [UInt8] = []
        for v in [a, b, c, d] {
            for i in 0..<4 { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt32(i)))) }
        }
        return out
    }
}
