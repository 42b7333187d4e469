import Crypto
import Foundation

/// NTLMv2 (MS-NLMP) for proxy authentication: the NEGOTIATE message, reading the CHALLENGE, and the
/// AUTHENTICATE message. Only what HTTP authentication needs: no signing or sealing, so no session key.
public enum NTLM {
    static let signature: [UInt8] = Array("NTLMSSP".utf8) + [0]

    struct Flags: OptionSet {
        let rawValue: UInt32
        static let unicode = Flags(rawValue: 0x0000_0001)
        static let oem = Flags(rawValue: 0x0000_0002)
        static let requestTarget = Flags(rawValue: 0x0000_0004)
        static let ntlm = Flags(rawValue: 0x0000_0200)
        static let alwaysSign = Flags(rawValue: 0x0000_8000)
        static let extendedSessionSecurity = Flags(rawValue: 0x0008_0000)
        static let targetInfo = Flags(rawValue: 0x0080_0000)
        static let bits128 = Flags(rawValue: 0x2000_0000)
        static let bits56 = Flags(rawValue: 0x8000_0000)
    }

    static let negotiateFlags: Flags = [.unicode, .oem, .requestTarget, .ntlm, .alwaysSign, .extendedSessionSecurity,
                                        .targetInfo, .bits128, .bits56]

    /// The first message (type 1): what we support, no names.
    public static func negotiateMessage() -> [UInt8] {
        var out = signature
        out.appendLE(UInt32(1))
        out.appendLE(negotiateFlags.rawValue)
        out += [UInt8](repeating: 0, count: 16)  // domain and workstation fields, empty
        return out
    }

    /// What the server's CHALLENGE (type 2) carries that the answer needs.
    public struct Challenge: Equatable, Sendable {
        public var serverChallenge: [UInt8]
        public var flags: UInt32
        public var targetInfo: [UInt8]

        public init(serverChallenge: [UInt8], flags: UInt32, targetInfo: [UInt8]) {
            self.serverChallenge = serverChallenge
            self.flags = flags
            self.targetInfo = targetInfo
        }

        /// The MsvAvTimestamp pair of the target info, when the server sent one.
        var timestamp: [UInt8]? {
            var i = 0
            while i + 4 <= targetInfo.count {
                let id = UInt16(targetInfo[i]) | UInt16(targetInfo[i + 1]) << 8
                let length = Int(UInt16(targetInfo[i + 2]) | UInt16(targetInfo[i + 3]) << 8)
                guard i + 4 + length <= targetInfo.count else { return nil }
                if id == 0 { return nil }
                if id == 7 && length == 8 { return Array(targetInfo[(i + 4)..<(i + 12)]) }
                i += 4 + length
            }
            return nil
        }
    }

    public static func parseChallenge(_ bytes: [UInt8]) throws(ProxyAuthenticationError) -> Challenge {
        guard bytes.count >= 32, Array(bytes[0..<8]) == signature, bytes.readLE32(8) == 2 else {
            throw .malformedChallenge("NTLM", "not an NTLM CHALLENGE message")
        }
        let flags = bytes.readLE32(20)
        let serverChallenge = Array(bytes[24..<32])
        var targetInfo: [UInt8] = []
        // Target information counts only when its flag is set and its fields point inside the message: squid's
        // ntlm_fake_auth, for one, sets the flag and puts the domain name where the fields should be.
        if flags & Flags.targetInfo.rawValue != 0, bytes.count >= 48 {
            let length = Int(bytes.readLE16(40))
            let offset = Int(bytes.readLE32(44))
            if offset >= 48, offset + length <= bytes.count {
                targetInfo = Array(bytes[offset..<(offset + length)])
            }
        }
        return Challenge(serverChallenge: serverChallenge, flags: flags, targetInfo: targetInfo)
    }

    /// NTOWFv2: HMAC-MD5 keyed with the NT hash (MD4 of the UTF-16LE password) over UTF-16LE(upper(user) + domain).
    public static func ntowfv2(password: String, user: String, domain: String) -> [UInt8] {
        let ntHash = MD4.hash(utf16LE(password))
        return hmacMD5(key: ntHash, utf16LE(user.uppercased() + domain))
    }

    /// The responses of MS-NLMP §3.3.2 for a given time and client challenge (fixed ones in the spec's tests).
    public static func responses(challenge: Challenge, user: String, domain: String, password: String,
                          time: [UInt8], clientChallenge: [UInt8]) -> (nt: [UInt8], lm: [UInt8]) {
        let key = ntowfv2(password: password, user: user, domain: domain)
        var temp: [UInt8] = [1, 1, 0, 0, 0, 0, 0, 0]
        temp += time
        temp += clientChallenge
        temp += [0, 0, 0, 0]
        temp += challenge.targetInfo
        temp += [0, 0, 0, 0]
        let proof = hmacMD5(key: key, challenge.serverChallenge + temp)
        let lm = hmacMD5(key: key, challenge.serverChallenge + clientChallenge) + clientChallenge
        return (proof + temp, lm)
    }

    /// The third message (type 3). `user` may be `DOMAIN\user` or `user@domain`.
    public static func authenticateMessage(challenge: Challenge, user: String, password: String,
                                           workstation: String = "") -> [UInt8] {
        let (name, domain) = splitDomain(user)
        var rng = SystemRandomNumberGenerator()
        let clientChallenge = (0..<8).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let time = challenge.timestamp ?? fileTimeNow()
        let (nt, lm) = responses(challenge: challenge, user: name, domain: domain, password: password, time: time,
                                 clientChallenge: clientChallenge)
        let fields: [[UInt8]] = [lm, nt, utf16LE(domain), utf16LE(name), utf16LE(workstation), []]
        var out = signature
        out.appendLE(UInt32(3))
        var offset = 64
        var payload: [UInt8] = []
        for field in fields {
            out.appendLE(UInt16(field.count))
            out.appendLE(UInt16(field.count))
            out.appendLE(UInt32(offset))
            payload += field
            offset += field.count
        }
        let flags = challenge.flags & (negotiateFlags.rawValue) | Flags.unicode.rawValue
        out.appendLE(flags)
        return out + payload
    }

    static func splitDomain(_ user: String) -> (user: String, domain: String) {
        if let slash = user.firstIndex(of: "\\") {
            return (String(user[user.index(after: slash)...]), String(user[..<slash]))
        }
        if let at = user.lastIndex(of: "@") {
            return (String(user[..<at]), String(user[user.index(after: at)...]))
        }
        return (user, "")
    }

    static func utf16LE(_ text: String) -> [UInt8] {
        text.utf16.flatMap { [UInt8(truncatingIfNeeded: $0), UInt8(truncatingIfNeeded: $0 >> 8)] }
    }

    static func hmacMD5(key: [UInt8], _ data: [UInt8]) -> [UInt8] {
        Array(HMAC<Insecure.MD5>.authenticationCode(for: data, using: SymmetricKey(data: key)))
    }

    /// Now, as a Windows FILETIME (100 ns since 1601), little-endian.
    static func fileTimeNow() -> [UInt8] {
        let ticks = UInt64((Date().timeIntervalSince1970 + 11_644_473_600) * 10_000_000)
        var out: [UInt8] = []
        out.appendLE(ticks)
        return out
    }
}

extension Array where Element == UInt8 {
    mutating func appendLE<T: FixedWidthInteger>(_ value: T) {
        Swift.withUnsafeBytes(of: value.littleEndian) { append(contentsOf: $0) }
    }

    func readLE16(_ at: Int) -> UInt16 { UInt16(self[at]) | UInt16(self[at + 1]) << 8 }
    func readLE32(_ at: Int) -> UInt32 {
        UInt32(self[at]) | UInt32(self[at + 1]) << 8 | UInt32(self[at + 2]) << 16 | UInt32(self[at + 3]) << 24
    }
}
