import AditGateway
import AditMux
import AditTransport
import Foundation
import NIOHTTP1
import Testing

@Suite struct UsersFileTests {
    let token = "XBrK97T3bz8tYiaW3Uz9dXBU67WYunq8bvlPw6jnfj0"

    @Test func aFullEntryParses() throws {
        let hash = try PasswordHash.make(password: "pw", rounds: 1024)
        let text = """
            users:
              - name: alice
                token: \(TokenDigest(of: token))
                password: \(hash)
                certificates: [CN=alice, "DNS:alice.example"]
                allow: ["db.internal:5432", "10.0.0.0/8:22", "10.0.0.53:53/udp"]
                allow-reverse: ["127.0.0.1:8000-8999"]
                limits: { sessions: 2, streams: 100 }
              - name: bob
                tokens:
                  - \(TokenDigest(of: "another"))
            """
        let users = try UsersFile.parse(text, path: "users.yaml")
        #expect(users.map(\.name) == ["alice", "bob"])
        let alice = users[0]
        #expect(alice.tokens == [TokenDigest(of: token)])
        #expect(alice.password == hash)
        #expect(alice.certificates == ["CN=alice", "DNS:alice.example"])
        #expect(alice.allow?.allows(MuxTarget(host: .name("db.internal"), port: 5432)) == true)
        #expect(alice.allow?.allows(MuxTarget(hostText: "10.0.0.53", port: 53), kind: .datagram) == true)
        #expect(alice.allowReverse?.allows(MuxTarget(hostText: "127.0.0.1", port: 8080)) == true)
        #expect(alice.limits == UserLimits(sessions: 2, streams: 100))
        #expect(users[1].allow == nil)  // the server's --allow applies
    }

    @Test(arguments: [
        ("users:\n  - name: a\n    tokn: sha256:00\n", 3, "unknown key `tokn`"),
        ("users:\n  - name: a\n    allow: [\"x:1\"]\n", 2, "no credential"),
        ("users:\n  - name: a\n    token: secret-itself\n", 3, "never the token itself"),
        ("users:\n  - name: a\n    password: hunter2\n", 3, "never the password itself"),
        ("users:\n  - name: a b\n    token: sha256:\(String(repeating: "0", count: 64))\n", 2, "letters, digits"),
        ("users:\n  - name: a\n    token: sha256:\(String(repeating: "0", count: 64))\n  - name: a\n    token: sha256:\(String(repeating: "1", count: 64))\n", 4, "listed twice"),
        ("users:\n  - name: a\n    token: sha256:\(String(repeating: "0", count: 64))\n  - name: b\n    token: sha256:\(String(repeating: "0", count: 64))\n", 5, "also `a`'s"),
        ("users:\n  - name: a\n    token: sha256:\(String(repeating: "0", count: 64))\n    allow: ['::1:22']\n", 4, "brackets"),
        ("users:\n  - name: a\n    token: sha256:\(String(repeating: "0", count: 64))\n    limits: {sessions: 0}\n", 4, "at least 1"),
        ("users: [\n  - name: a\n", 2, "not valid YAML"),
        ("people: []\n", 1, "unknown key `people`"),
    ])
    func everyMistakeNamesItsLine(text: String, line: Int, words: String) {
        do {
            _ = try UsersFile.parse(text, path: "users.yaml")
            Issue.record("expected an error for \(text)")
        } catch {
            #expect(error.line == line, "\(error)")
            #expect(error.description.contains(words), "\(error)")
            #expect(error.description.hasPrefix("users.yaml:\(line): "), "\(error)")
        }
    }

    @Test func anEmptyListIsNoUsers() throws {
        #expect(try UsersFile.parse("users: []\n", path: "u").isEmpty)
    }
}

@Suite struct CredentialTests {
    @Test func tokensAreKeptAsTheirDigestAndParseBack() throws {
        let token = TokenDigest.makeToken()
        #expect(token.count == 43)  // 32 bytes, base64url, no padding: a valid subprotocol token
        #expect(token.allSatisfy { $0.isLetter || $0.isNumber || $0 == "-" || $0 == "_" })
        let digest = TokenDigest(of: token)
        #expect(TokenDigest.parse(digest.description) == digest)
        #expect(TokenDigest.parse("sha256:xyz") == nil)
        #expect(TokenDigest.parse(token) == nil)
    }

    @Test func passwordsVerifyAndTheirTextRoundTrips() throws {
        let hash = try PasswordHash.make(password: "correct horse", rounds: 1024)
        #expect(hash.verify("correct horse"))
        #expect(!hash.verify("correct horsf"))
        #expect(!hash.verify(""))
        #expect(PasswordHash.parse(hash.description) == hash)
        let again = try PasswordHash.make(password: "correct horse", rounds: 1024)
        #expect(again.salt != hash.salt && again.hash != hash.hash)  // salted
        #expect(PasswordHash.parse("scrypt:N=1000,r=8,p=1:AAAAAAAAAAA=:AAAAAAAAAAAAAAAAAAAAAA==") == nil)  // N not a power of 2
    }
}

@Suite struct AccessControlTests {
    let token = "XBrK97T3bz8tYiaW3Uz9dXBU67WYunq8bvlPw6jnfj0"

    func access(origins: [String]? = nil) throws -> AccessControl {
        var alice = UserRecord(name: "alice")
        alice.tokens = [TokenDigest(of: token)]
        alice.allow = try TargetPolicy.parse(["db:5432"])
        var bob = UserRecord(name: "bob")
        bob.password = try PasswordHash.make(password: "pw", rounds: 1024)
        bob.certificates = ["CN=bob"]
        return AccessControl(directory: UserDirectory(users: [alice, bob]), defaultPolicy: try TargetPolicy.parse(["*:443"]),
                             defaultReversePolicy: TargetPolicy(patterns: []), allowedOrigins: origins)
    }

    func head(_ headers: [(String, String)]) -> HTTPRequestHead {
        HTTPRequestHead(version: .http1_1, method: .GET, uri: "/", headers: HTTPHeaders(headers))
    }

    @Test func aKnownBearerTokenIsItsUserWithItsRules() throws {
        guard case .admit(let identity) = try access().decide(head([("Authorization", "Bearer \(token)")])) else {
            Issue.record("expected admission"); return
        }
        #expect(identity.name == "alice" && identity.method == .token)
        #expect(identity.policy.allows(MuxTarget(host: .name("db"), port: 5432)))
        #expect(!identity.policy.allows(MuxTarget(host: .name("web"), port: 443)))  // her own rules, not the server's
    }

    @Test func aBrowserMayPresentItsTokenAsASubprotocol() throws {
        let request = head([("Sec-WebSocket-Protocol", "adit.v1, adit.bearer.\(token)")])
        guard case .admit(let identity) = try access().decide(request) else { Issue.record("expected admission"); return }
        #expect(identity.name == "alice")
    }

    @Test func noOrAnUnknownCredentialIs401WithBothChallenges() throws {
        for request in [head([]), head([("Authorization", "Bearer nope")]), head([("Sec-WebSocket-Protocol", "adit.v1, adit.bearer.nope")])] {
            guard case .refuse(let refusal) = try access().decide(request) else { Issue.record("expected a refusal"); continue }
            #expect(refusal.status == .unauthorized)
            #expect(refusal.headers.map(\.1).contains { $0.hasPrefix("Bearer") })
            #expect(refusal.headers.map(\.1).contains { $0.hasPrefix("Basic") })
        }
    }

    @Test func basicCredentialsGoToAPasswordCheckAndUnknownNamesLookTheSame() throws {
        let access = try self.access()
        let basic = { (text: String) in [("Authorization", "Basic " + Data(text.utf8).base64EncodedString())] }
        guard case .checkPassword(let bob, let password) = access.decide(head(basic("bob:pw"))) else {
            Issue.record("expected a password check"); return
        }
        #expect(bob.name == "bob" && password == "pw")
        guard case .admit(let identity) = access.passwordChecked(bob, ok: bob.password!.verify(password)) else {
            Issue.record("expected admission"); return
        }
        #expect(identity.method == .password)
        // An unknown user is checked just as slowly, and refused just the same.
        guard case .checkPassword(let nobody, let guess) = access.decide(head(basic("mallory:pw"))) else {
            Issue.record("expected a password check"); return
        }
        guard case .refuse(let refusal) = access.passwordChecked(nobody, ok: nobody.password!.verify(guess)) else {
            Issue.record("expected a refusal"); return
        }
        #expect(refusal.status == .unauthorized)
        guard case .refuse(let wrongPassword) = access.passwordChecked(bob, ok: false) else { Issue.record("expected 401"); return }
        #expect(wrongPassword == refusal)  // the same answer: the 401 does not tell which names exist
    }

    @Test func aVerifiedClientCertificateIsItsUser() throws {
        guard case .admit(let identity) = try access().decide(head([]), certificateIdentities: ["CN=bob", "DNS:x"]) else {
            Issue.record("expected admission"); return
        }
        #expect(identity.name == "bob" && identity.method == .certificate)
        guard case .refuse(let refusal) = try access().decide(head([]), certificateIdentities: ["CN=eve"]) else {
            Issue.record("expected a refusal"); return
        }
        #expect(refusal.reason.contains("CN=eve"))
    }

    @Test func browserOriginsAreRefusedUnlessListed() throws {
        let fromPage = head([("Origin", "https://evil.example"), ("Authorization", "Bearer \(token)")])
        guard case .refuse(let refusal) = try access().decide(fromPage) else { Issue.record("expected 403"); return }
        #expect(refusal.status == .forbidden)
        guard case .admit = try access(origins: ["https://EVIL.example"]).decide(fromPage) else {
            Issue.record("a listed origin is admitted (case-insensitively)"); return
        }
        guard case .refuse = try access(origins: ["https://portal.example"]).decide(fromPage) else {
            Issue.record("an unlisted origin is refused"); return
        }
    }

    @Test func withoutUsersEveryoneIsAnonymousUnderTheServersRules() throws {
        let open = AccessControl(directory: nil, defaultPolicy: try TargetPolicy.parse(["*:443"]),
                                 defaultReversePolicy: TargetPolicy(patterns: []))
        guard case .admit(let identity) = open.decide(head([("Origin", "https://any.example")])) else {
            Issue.record("expected admission"); return
        }
        #expect(identity.method == .none)
        #expect(identity.policy.allows(MuxTarget(host: .name("web"), port: 443)))
    }
}

@Suite struct LogTextTests {
    @Test func peerTextCannotForgeLinesOrFloodTheLog() {
        #expect(LogText.bounded("curl/8\nfake line\r") == "curl/8\\nfake line\\r")
        #expect(LogText.bounded("a\u{1b}[31mb") == "a\\u{1b}[31mb")
        let long = LogText.bounded(String(repeating: "x", count: 10_000))
        #expect(long.hasPrefix(String(repeating: "x", count: 200)))
        #expect(long.hasSuffix("…(+9800 bytes)"))
    }
}

