import AditGateway
import AditMux
import Testing

@Suite struct TargetPolicyTests {
    func allowed(_ patterns: [String], _ host: String, _ port: UInt16) throws -> Bool {
        try TargetPolicy.parse(patterns).allows(MuxTarget(hostText: host, port: port))
    }

    @Test func patternsFromTheIssue() throws {
        #expect(try allowed(["db.internal:5432"], "db.internal", 5432))
        #expect(try allowed(["db.internal:5432"], "DB.Internal", 5432))
        #expect(try !allowed(["db.internal:5432"], "db.internal", 5433))
        #expect(try allowed(["db.internal:*"], "db.internal", 1))
        #expect(try allowed(["*.example.com:443"], "a.b.example.com", 443))
        #expect(try !allowed(["*.example.com:443"], "example.com", 443))
        #expect(try !allowed(["*.example.com:443"], "badexample.com", 443))
        #expect(try allowed(["10.0.0.0/8:22"], "10.200.3.4", 22))
        #expect(try !allowed(["10.0.0.0/8:22"], "11.0.0.1", 22))
        #expect(try !allowed(["10.0.0.0/8:22"], "10.0.0.1", 23))
        #expect(try allowed(["[::1]:*"], "::1", 8080))
        #expect(try allowed(["[::1]:*"], "0:0:0:0:0:0:0:1", 8080))
        #expect(try !allowed(["[::1]:*"], "127.0.0.1", 8080))
        #expect(try allowed(["*:*"], "anything.at.all", 1))
        #expect(try allowed(["[fd00::/8]:*"], "fd12::5", 1))
        #expect(try !allowed(["[fd00::/8]:*"], "fe80::1", 1))
        #expect(try allowed(["127.0.0.1:8000-8999"], "127.0.0.1", 8500))
        #expect(try !allowed(["127.0.0.1:8000-8999"], "127.0.0.1", 9000))
        #expect(try !allowed([], "127.0.0.1", 22))  // denied unless allowed
    }

    @Test func ipv4MappedIPv6MatchesIPv4Rules() throws {
        #expect(try allowed(["127.0.0.0/8:*"], "::ffff:127.0.0.1", 22))
    }

    @Test func resolvedAddressesAreCheckedAgainstAddressRules() throws {
        let policy = try TargetPolicy.parse(["10.0.0.0/8:22"])
        #expect(!policy.allows(MuxTarget(hostText: "db.internal", port: 22)))
        #expect(policy.allows(address: .ipv4(0x0A00_0005), port: 22))
        #expect(!policy.allows(address: .ipv4(0x0B00_0005), port: 22))
    }

    @Test(arguments: ["", "host", "host:", "host:0", "host:70000", "host:abc", "::1:22", "10.0.0.0/33:22",
                      "[nothex]:22", "*.:22", "a b:22", "host:9-1"])
    func badPatternsAreRejectedWithAUsageMessage(_ text: String) {
        #expect(throws: ConfigurationError.self) { _ = try TargetPolicy.parse([text]) }
    }

    @Test func unbracketedIPv6GetsASpecificHint() {
        #expect(throws: ConfigurationError("--allow '::1:22': put IPv6 addresses in brackets, e.g. [::1]:22")) {
            _ = try TargetPattern.parse("::1:22")
        }
    }

    /// Commas separate patterns; any other separator is named as the mistake, not taken for unbracketed IPv6.
    @Test(arguments: ["a:22;b:80", "a:22 b:80", "a:22|b:80"])
    func severalPatternsWithTheWrongSeparatorGetTheSeparatorHint(_ text: String) {
        #expect(throws: ConfigurationError("--allow '\(text)' is not one HOST:PORT pattern: separate several with commas ('a:22,b:80') or repeat --allow")) {
            _ = try TargetPattern.parse(text)
        }
    }

    @Test func aCommaListIsSeveralPatterns() throws {
        let policy = try TargetPolicy.parse(["a.example:22, b.example:80"])
        #expect(policy.patterns.map(\.text) == ["a.example:22", "b.example:80"])
    }
}

/// Loopback, link-local and metadata addresses are never reached through a broad rule (issue 8).
@Suite struct SecureDefaultTests {
    func refusal(_ rules: [String], _ host: String, _ port: UInt16 = 80, name: String? = nil,
                 kind: MuxStreamKind = .stream) throws -> String? {
        try TargetPolicy.parse(rules).refusal(connecting: MuxTarget(hostText: host, port: port).host, port: port,
                                              kind: kind, name: name)
    }

    @Test(arguments: ["127.0.0.1", "127.1.2.3", "0.0.0.0", "169.254.169.254", "169.254.1.1", "100.100.100.200",
                      "::1", "::", "fe80::1", "fd00:ec2::254", "::ffff:127.0.0.1", "::ffff:169.254.169.254"])
    func broadRulesDoNotOpenSpecialAddresses(_ address: String) throws {
        let why = try refusal(["*:*", "0.0.0.0/0:*", "[::/0]:*"], address)
        #expect(why != nil, "\(address) must be refused under broad rules")
    }

    @Test func rulesThatNameThemDo() throws {
        #expect(try refusal(["127.0.0.1:22"], "127.0.0.1", 22) == nil)
        #expect(try refusal(["127.0.0.0/8:*"], "127.0.0.5") == nil)
        #expect(try refusal(["[::1]:*"], "::1") == nil)
        #expect(try refusal(["169.254.169.254:80"], "169.254.169.254") == nil)
        // link-local as a whole does not name the metadata service inside it
        #expect(try refusal(["169.254.0.0/16:*"], "169.254.169.254") != nil)
        #expect(try refusal(["169.254.0.0/16:*"], "169.254.7.7") == nil)
        // the exact name the client asked for names it
        #expect(try refusal(["localhost:22"], "127.0.0.1", 22, name: "localhost") == nil)
        // but a wildcard name rule does not (a name that resolves to loopback: DNS rebinding)
        #expect(try refusal(["*.corp:*"], "127.0.0.1", name: "evil.corp") != nil)
        #expect(try refusal(["*:*"], "127.0.0.1", name: "localhost") != nil)
        // an ordinary address under a broad rule is fine
        #expect(try refusal(["*:*"], "10.1.2.3") == nil)
        #expect(try refusal(["*:*"], "2001:db8::1") == nil)
    }

    @Test func anIPv6RuleDoesNotReachAnIPv4HostThroughAMappedAddress() throws {
        #expect(try refusal(["[::/0]:*"], "::ffff:10.1.2.3") != nil)
        #expect(try refusal(["10.0.0.0/8:*"], "::ffff:10.1.2.3") == nil)
    }

    @Test func udpNeedsItsOwnRule() throws {
        #expect(try refusal(["10.0.0.53:53"], "10.0.0.53", 53, kind: .datagram)?.contains("/udp") == true)
        #expect(try refusal(["10.0.0.53:53/udp"], "10.0.0.53", 53, kind: .datagram) == nil)
    }
}
