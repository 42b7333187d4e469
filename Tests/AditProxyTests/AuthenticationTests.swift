import AditProxy
import Foundation
import Testing

func hex(_ text: String) -> [UInt8] {
    var out: [UInt8] = []
    var digits = text.filter { !$0.isWhitespace }[...]
    while !digits.isEmpty {
        out.append(UInt8(digits.prefix(2), radix: 16)!)
        digits = digits.dropFirst(2)
    }
    return out
}

@Suite struct MD4Tests {
    /// RFC 1320 §A.5.
    @Test(arguments: [
        ("", "31d6cfe0d16ae931b73c59d7e0c089c0"),
        ("a", "bde52cb31de33e46245e05fbdbd6fb24"),
        ("abc", "a448017aaf21d8525fc10ae87aa6729d"),
        ("message digest", "d9130a8164549fe818874806e1c7014b"),
        ("abcdefghijklmnopqrstuvwxyz", "d79e1c308aa5bbcdeea8ed63df412da9"),
        ("12345678901234567890123456789012345678901234567890123456789012345678901234567890",
         "e33b4ddc9c38f2199c3e7b164fcc0536"),
    ])
    func rfc1320Vectors(input: String, digest: String) {
        #expect(MD4.hash(Array(input.utf8)) == hex(digest))
    }
}

@Suite struct NTLMTests {
    /// MS-NLMP §4.2.4: NTLMv2 with the specification's user, domain, password, challenges and time.
    @Test func msnlmpNTLMv2Vectors() throws {
        #expect(NTLM.ntowfv2(password: "Password", user: "User", domain: "Domain")
            == hex("0c868a403bfd7a93a3001ef22ef02e3f"))
        // The CHALLENGE's target information: MsvAvNbDomainName "Domain", MsvAvNbComputerName "Server", EOL.
        let targetInfo = hex("02000c0044006f006d00610069006e00 01000c005300650072007600650072000000 0000")
        let challenge = NTLM.Challenge(serverChallenge: hex("0123456789abcdef"), flags: 0xE28A_8233,
                                       targetInfo: targetInfo)
        let (nt, lm) = NTLM.responses(challenge: challenge, user: "User", domain: "Domain", password: "Password",
                                      time: [UInt8](repeating: 0, count: 8), clientChallenge: hex("aaaaaaaaaaaaaaaa"))
        #expect(Array(nt.prefix(16)) == hex("68cd0ab851e51c96aabc927bebef6a1c"))  // NTProofStr
        #expect(lm == hex("86c35097ac9cec102554764a57cccc19 aaaaaaaaaaaaaaaa"))
        let expectedLength = 16 + 28 + targetInfo.count + 4
        #expect(nt.count == expectedLength)
    }

    @Test func challengeRoundTripAndAuthenticateLayout() throws {
        // A CHALLENGE as squid's ntlm_fake_auth sends it (header fields, then the target info).
        var message = Array("NTLMSSP".utf8) + [0, 2, 0, 0, 0]
        message += [0, 0, 0, 0, 48, 0, 0, 0]              // target name: empty, at 48
        message += [0x05, 0x82, 0x89, 0x00]                // flags
        message += hex("0123456789abcdef")                 // server challenge
        message += [UInt8](repeating: 0, count: 8)         // reserved
        let info = hex("02000c0044006f006d00610069006e000000 0000")
        message += [UInt8(info.count), 0, UInt8(info.count), 0, 48, 0, 0, 0]
        message += info
        let challenge = try NTLM.parseChallenge(message)
        #expect(challenge.serverChallenge == hex("0123456789abcdef"))
        #expect(challenge.targetInfo == info)
        let answer = NTLM.authenticateMessage(challenge: challenge, user: "CORP\\alice", password: "s3cret")
        #expect(Array(answer.prefix(12)) == Array("NTLMSSP".utf8) + [0, 3, 0, 0, 0])
        // The user name field points at UTF-16LE "alice" and the domain field at "CORP".
        func field(_ index: Int) -> [UInt8] {
            let base = 12 + index * 8
            let length = Int(answer[base]) | Int(answer[base + 1]) << 8
            let offset = Int(answer[base + 4]) | Int(answer[base + 5]) << 8
            return Array(answer[offset..<(offset + length)])
        }
        #expect(field(3) == Array("alice".utf16.flatMap { [UInt8($0), 0] }))
        #expect(field(2) == Array("CORP".utf16.flatMap { [UInt8($0), 0] }))
        let expectedLength = 16 + 28 + info.count + 4
        #expect(field(1).count == expectedLength)
        #expect(throws: ProxyAuthenticationError.self) { _ = try NTLM.parseChallenge(Array(message.prefix(20))) }
        // squid's ntlm_fake_auth: the target-info flag set, the domain name where its fields should be.
        let fake = hex("4e544c4d535350000200000009000900aeaaaaaa078288a23ce9a6c94ef12beb0000000000003a00574f524b47524f5550")
        let parsedFake = try NTLM.parseChallenge(fake)
        #expect(parsedFake.serverChallenge == hex("3ce9a6c94ef12beb"))
        #expect(parsedFake.targetInfo.isEmpty)
        #expect(throws: ProxyAuthenticationError.self) { _ = try NTLM.parseChallenge(NTLM.negotiateMessage()) }
    }
}

@Suite struct DigestTests {
    /// RFC 7616 §3.9.1, both algorithms.
    @Test(arguments: [
        ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
        ("SHA-256", "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ])
    func rfc7616Example(algorithm: String, response: String) throws {
        let challenge = AuthenticationChallenge(scheme: "digest", parameters: [
            "realm": "http-auth@example.org", "qop": "auth, auth-int", "algorithm": algorithm,
            "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "opaque": "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS",
        ])
        var digest = try #require(DigestAuthentication(challenge: challenge))
        let value = digest.authorization(user: "Mufasa", password: "Circle of Life", authority: "/dir/index.html",
                                         method: "GET", cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
        #expect(value.contains("response=\"\(response)\""))
        #expect(value.contains("nc=00000001"))
        #expect(value.contains("uri=\"/dir/index.html\""))
        #expect(value.contains("opaque=\"FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS\""))
        let second = digest.authorization(user: "Mufasa", password: "Circle of Life", authority: "/", method: "GET")
        #expect(second.contains("nc=00000002"))
    }

    @Test func unusableChallengesAreIgnored() {
        #expect(DigestAuthentication(challenge: .init(scheme: "digest", parameters: ["realm": "r"])) == nil)
        #expect(DigestAuthentication(challenge: .init(scheme: "digest", parameters: [
            "realm": "r", "nonce": "n", "algorithm": "SHA-512-256"])) == nil)
        #expect(DigestAuthentication(challenge: .init(scheme: "digest", parameters: [
            "realm": "r", "nonce": "n", "qop": "auth-int"])) == nil)
    }
}

@Suite struct ChallengeParsingTests {
    @Test func severalChallengesInOneHeaderAndAcrossHeaders() {
        let parsed = AuthenticationChallenge.parse([
            #"Digest realm="tunnel, test", nonce="abc", qop="auth", stale=false, Basic realm="tunnel-test""#,
            "NTLM",
            "NTLM TlRMTVNTUAACAAAAAAAAAAAAAAA=",
            "Negotiate",
        ])
        #expect(parsed.map(\.scheme) == ["digest", "basic", "ntlm", "ntlm", "negotiate"])
        #expect(parsed[0].parameters == ["realm": "tunnel, test", "nonce": "abc", "qop": "auth", "stale": "false"])
        #expect(parsed[1].parameters == ["realm": "tunnel-test"])
        #expect(parsed[2].token == nil)
        #expect(parsed[3].token == "TlRMTVNTUAACAAAAAAAAAAAAAAA=")
    }

    @Test func quotedStringsUnescape() {
        let parsed = AuthenticationChallenge.parse([#"Basic realm="say \"hi\"""#])
        #expect(parsed.first?.parameters["realm"] == #"say "hi""#)
    }
}
