import AditWebSocket
import Testing

@Suite struct PerMessageDeflateNegotiationTests {
    func offers(_ header: String) throws -> [WebSocketExtensionOffer] {
        try WebSocketExtensionOffer.parse([header])
    }

    @Test func parsesSeveralOffersParametersInAnyOrderAndQuotedValues() throws {
        let parsed = try offers(
            #"permessage-deflate; client_max_window_bits="10" ; server_no_context_takeover, permessage-deflate,x-other; a=b"#)
        #expect(parsed.count == 3)
        #expect(parsed[0].parameters == [.init(name: "client_max_window_bits", value: "10"),
                                         .init(name: "server_no_context_takeover", value: nil)])
        #expect(parsed[1] == WebSocketExtensionOffer(name: "permessage-deflate"))
        #expect(parsed[2].name == "x-other")
        // Several header lines are one list.
        #expect(try WebSocketExtensionOffer.parse(["permessage-deflate", "", "foo"]).map(\.name) == ["permessage-deflate", "foo"])
    }

    @Test(arguments: ["permessage-deflate;", "permessage-deflate; =1", #"permessage-deflate; a="1"#,
                      "permessage-deflate, ,", "permessage-deflate; a=", #"permessage-deflate; a="1 2""#, ";x"])
    func malformedHeadersAreErrors(_ header: String) {
        #expect(throws: WebSocketExtensionError.self) { _ = try WebSocketExtensionOffer.parse([header]) }
    }

    @Test func parameterRulesOfRFC7692() throws {
        func params(_ h: String, response: Bool = false) throws -> PerMessageDeflateParameters {
            try PerMessageDeflateParameters(try offers(h)[0], isResponse: response)
        }
        let full = try params("permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; client_max_window_bits")
        #expect(full == PerMessageDeflateParameters(serverNoContextTakeover: true, clientNoContextTakeover: true,
                                                    serverMaxWindowBits: 10, clientMaxWindowBits: .noValue))
        #expect(throws: WebSocketExtensionError.duplicateParameter("server_max_window_bits")) {
            _ = try params("permessage-deflate; server_max_window_bits=10; server_max_window_bits=11")
        }
        #expect(throws: WebSocketExtensionError.unknownParameter("foo")) { _ = try params("permessage-deflate; foo") }
        for bad in ["7", "16", "08", "+9", "9.0", "1x"] {
            #expect(throws: WebSocketExtensionError.self) { _ = try params("permessage-deflate; server_max_window_bits=\(bad)") }
        }
        #expect(throws: WebSocketExtensionError.self) { _ = try params("permessage-deflate; server_max_window_bits") }
        #expect(throws: WebSocketExtensionError.self) { _ = try params("permessage-deflate; server_no_context_takeover=1") }
        // In a response, client_max_window_bits needs a value.
        #expect(throws: WebSocketExtensionError.self) { _ = try params("permessage-deflate; client_max_window_bits", response: true) }
    }

    @Test func serverNarrowsWindowsAndHonoursNoContextTakeover() throws {
        var policy = PerMessageDeflatePolicy()
        policy.serverMaxWindowBits = 12
        policy.clientMaxWindowBits = 10
        let chosen = try #require(PerMessageDeflateNegotiation.accept(
            offers: try offers("permessage-deflate; server_max_window_bits=14; client_max_window_bits; server_no_context_takeover"),
            policy: policy))
        #expect(chosen.response == PerMessageDeflateParameters(serverNoContextTakeover: true, serverMaxWindowBits: 12,
                                                               clientMaxWindowBits: .value(10)))
        #expect(chosen.agreement == PerMessageDeflateAgreement(compressWindowBits: 12, decompressWindowBits: 10,
                                                               compressNoContextTakeover: true,
                                                               decompressNoContextTakeover: false))
    }

    @Test func serverDeclinesBadOffersOneByOneAndTakesWindowEight() throws {
        let policy = PerMessageDeflatePolicy()
        // First offer is invalid (unknown parameter), second duplicates a parameter, third is fine.
        let chosen = try #require(PerMessageDeflateNegotiation.accept(
            offers: try offers("permessage-deflate; bogus, permessage-deflate; server_no_context_takeover; server_no_context_takeover, permessage-deflate"),
            policy: policy))
        #expect(chosen.response == PerMessageDeflateParameters())
        #expect(PerMessageDeflateNegotiation.accept(offers: try offers("x-webkit-deflate-frame"), policy: policy) == nil)
        // An 8-bit window for us: accepted, compressed with Huffman coding only.
        let eight = try #require(PerMessageDeflateNegotiation.accept(
            offers: try offers("permessage-deflate; server_max_window_bits=8"), policy: policy))
        #expect(eight.response.serverMaxWindowBits == 8)
        #expect(eight.agreement.compressWindowBits == 8)
    }

    @Test func serverNamesAClientWindowOnlyWhenOffered() throws {
        var policy = PerMessageDeflatePolicy()
        policy.clientMaxWindowBits = 9
        let chosen = try #require(PerMessageDeflateNegotiation.accept(offers: try offers("permessage-deflate"), policy: policy))
        #expect(chosen.response.clientMaxWindowBits == .absent)
        #expect(chosen.agreement.decompressWindowBits == 15)
    }

    @Test func clientChecksTheAnswer() throws {
        let offered = PerMessageDeflateParameters(serverMaxWindowBits: 12, clientMaxWindowBits: .noValue)
        let agreed = try #require(try PerMessageDeflateNegotiation.validate(
            response: ["permessage-deflate; server_max_window_bits=10; client_max_window_bits=8; client_no_context_takeover"],
            offered: offered))
        #expect(agreed == PerMessageDeflateAgreement(compressWindowBits: 8, decompressWindowBits: 10,
                                                     compressNoContextTakeover: true, decompressNoContextTakeover: false))
        #expect(try PerMessageDeflateNegotiation.validate(response: [], offered: offered) == nil)
        // Answers the client must refuse:
        for bad in ["permessage-deflate; server_max_window_bits=13",         // above the offer
                    "permessage-deflate",                                    // offer named server_max_window_bits
                    "permessage-deflate; server_max_window_bits=10, x-foo",  // two extensions
                    "x-foo",                                                 // never offered
                    "permessage-deflate; server_max_window_bits=10; bogus"] {
            #expect(throws: WebSocketExtensionError.self) {
                _ = try PerMessageDeflateNegotiation.validate(response: [bad], offered: offered)
            }
        }
        #expect(throws: WebSocketExtensionError.self) {
            _ = try PerMessageDeflateNegotiation.validate(response: ["permessage-deflate; client_max_window_bits=10"],
                                                          offered: PerMessageDeflateParameters())
        }
        #expect(throws: WebSocketExtensionError.self) {
            _ = try PerMessageDeflateNegotiation.validate(
                response: ["permessage-deflate"], offered: PerMessageDeflateParameters(serverNoContextTakeover: true))
        }
    }
}
