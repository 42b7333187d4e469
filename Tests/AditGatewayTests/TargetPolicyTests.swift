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
}
