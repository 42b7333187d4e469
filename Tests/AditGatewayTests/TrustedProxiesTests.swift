import NIOHTTP1
import Testing

import AditGateway

/// Whose X-Forwarded-For is believed, and which of its entries.
@Suite struct TrustedProxiesTests {
    let proxies = try! TrustedProxies.parse(["10.0.0.0/8", "192.0.2.10", "fd00::/8"])

    func headers(_ values: String...) -> HTTPHeaders {
        HTTPHeaders(values.map { ("X-Forwarded-For", $0) })
    }

    @Test func anUntrustedPeerIsTheClientWhateverItSays() {
        let r = proxies.clientAddress(peer: "198.51.100.1", headers: headers("203.0.113.7"))
        #expect(r.address == "198.51.100.1" && !r.forwarded)
    }

    @Test func aTrustedProxyNamesTheClient() {
        let r = proxies.clientAddress(peer: "10.1.2.3", headers: headers("203.0.113.7"))
        #expect(r.address == "203.0.113.7" && r.forwarded)
    }

    /// A client can put anything on the left; only what trusted hops appended counts.
    @Test func theRightmostUntrustedEntryWinsOverWhatTheClientWrote() {
        let r = proxies.clientAddress(peer: "10.1.2.3", headers: headers("1.1.1.1, 203.0.113.7, 10.9.9.9"))
        #expect(r.address == "203.0.113.7")
        let split = proxies.clientAddress(peer: "10.1.2.3", headers: headers("1.1.1.1", "203.0.113.7, 192.0.2.10"))
        #expect(split.address == "203.0.113.7")
    }

    @Test func garbageStopsTheWalkAtTheLastTrustedHop() {
        let r = proxies.clientAddress(peer: "10.1.2.3", headers: headers("203.0.113.7, unknown, 10.9.9.9"))
        #expect(r.address == "10.9.9.9")
        let none = proxies.clientAddress(peer: "10.1.2.3", headers: headers("not-an-address"))
        #expect(none.address == "10.1.2.3" && !none.forwarded)
    }

    @Test func portsAndBracketsAreStripped() {
        #expect(proxies.clientAddress(peer: "10.1.2.3", headers: headers("203.0.113.7:5555")).address == "203.0.113.7")
        #expect(proxies.clientAddress(peer: "fd00::1", headers: headers("[2001:db8::1]:443")).address == "2001:db8::1")
        #expect(proxies.clientAddress(peer: "10.1.2.3", headers: headers("2001:db8::2")).address == "2001:db8::2")
    }

    @Test func everyHopTrustedLeavesTheLeftmost() {
        let r = proxies.clientAddress(peer: "10.1.2.3", headers: headers("10.5.5.5, 10.6.6.6"))
        #expect(r.address == "10.5.5.5")
    }

    @Test func noHeaderIsTheProxyItself() {
        #expect(proxies.clientAddress(peer: "10.1.2.3", headers: HTTPHeaders()).address == "10.1.2.3")
    }

    @Test(arguments: ["10.0.0.0/33", "host.example", "10.0.0.0/8:22", "*", ""])
    func badRangesAreRefusedWithTheForm(_ text: String) {
        #expect(throws: ConfigurationError.self) { _ = try TrustedProxies.parse([text]) }
    }

    @Test func bracketedIPv6IsAccepted() throws {
        #expect(try TrustedProxies.parse(["[::1]", "[fd00::/8]"]).contains("::1"))
    }

    @Test func anIPv4MappedPeerIsItsIPv4Address() {
        #expect(proxies.contains("::ffff:10.0.0.1"))
        #expect(!proxies.contains("::ffff:11.0.0.1"))
    }
}
