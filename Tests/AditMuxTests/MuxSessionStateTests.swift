import AditMux
import Testing

@Suite struct MuxSessionStateTests {
    let hello = MuxHello(initialWindow: 1 << 16, maxMessageSize: 1 << 20, features: [.reverse])

    @Test func streamsWaitForHelloThenOpen() throws {
        var s = MuxSessionState()
        #expect(s.mayOpen() == nil)  // allowed: they wait for the peer's HELLO
        #expect(!s.acceptsStreams)
        #expect(s.peerHello == nil)
        #expect(try s.receivedHello(hello) == .ready)
        #expect(s.isReady)
        #expect(s.peerHello == hello)
        #expect(s.acceptsStreams)
    }

    @Test func aSecondHelloAWrongVersionOrATinyMessageSizeAreProtocolErrors() throws {
        var s = MuxSessionState()
        _ = try s.receivedHello(hello)
        #expect(throws: MuxProtocolError.self) { _ = try s.receivedHello(hello) }
        var v2 = MuxSessionState()
        #expect(throws: MuxProtocolError.self) {
            _ = try v2.receivedHello(MuxHello(version: 2, initialWindow: 1, maxMessageSize: 1 << 20))
        }
        var tiny = MuxSessionState()
        #expect(throws: MuxProtocolError.self) {
            _ = try tiny.receivedHello(MuxHello(initialWindow: 1, maxMessageSize: 1023))
        }
    }

    @Test func ourGoAwayStopsAcceptingButNotFinishing() throws {
        var s = MuxSessionState()
        _ = try s.receivedHello(hello)
        #expect(s.beginDrain() == true)
        #expect(s.beginDrain() == false)  // GOAWAY goes out once
        #expect(s.hasSentGoAway)
        #expect(!s.acceptsStreams)  // OPENs after our GOAWAY are answered with RESET 5
        #expect(s.mayOpen() == .draining)
        #expect(s.drainedWhenEmpty())
        #expect(s.peerHello == hello)  // streams that exist still need the peer's parameters
    }

    @Test func thePeersGoAwayStopsOurOpensButWeStillAccept() throws {
        var s = MuxSessionState()
        _ = try s.receivedHello(hello)
        #expect(s.receivedGoAway() == true)
        #expect(s.receivedGoAway() == false)
        #expect(s.hasReceivedGoAway)
        #expect(s.mayOpen() == .draining)
        #expect(s.acceptsStreams)  // the peer may still finish opening what it started
        #expect(s.beginDrain() == true)  // our own GOAWAY may still follow
        #expect(s.hasSentGoAway && s.hasReceivedGoAway)
        #expect(!s.acceptsStreams)
    }

    @Test func drainingBeforeHelloMeansNoStreamEverOpens() throws {
        var s = MuxSessionState()
        #expect(s.beginDrain() == true)
        #expect(s.mayOpen() == .draining)
        #expect(try s.receivedHello(hello) == .draining)
        #expect(!s.isReady)
        #expect(s.drainedWhenEmpty())
    }

    @Test func closedIsFinal() throws {
        var s = MuxSessionState()
        _ = try s.receivedHello(hello)
        #expect(s.close() == true)
        #expect(s.close() == false)
        #expect(s.isClosed)
        #expect(s.mayOpen() == .sessionClosed)
        #expect(s.beginDrain() == false)
        #expect(s.receivedGoAway() == false)
        #expect(!s.acceptsStreams)
    }
}
