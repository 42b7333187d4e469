import AditMux
import Testing

@Suite struct StreamStateMachineTests {
    @Test func openerMayOnlyUseThePeersWindow() {
        var s = StreamStateMachine.opening(peerInitialWindow: 100, localInitialWindow: 1000)
        #expect(s.canSend)
        s.sentData(length: 60, fin: false)
        #expect(s.sendWindow.available == 40)
        #expect(s.receivedOpenOK() == .opened)
        #expect(s.phase == .open)
        s.sentData(length: 40, fin: false)
        #expect(s.sendWindow.available == 0)
        #expect(s.receivedWindowUpdate(10) == .resumeSending)
        #expect(s.receivedWindowUpdate(10) == .none)
        #expect(s.sendWindow.available == 20)
    }

    @Test func receivingMoreThanTheCreditResetsWithFlowControlError() {
        var s = StreamStateMachine.accepting(peerInitialWindow: 10, localInitialWindow: 100)
        #expect(s.receivedData(length: 100, fin: false) == .deliver(fin: false))
        guard case .reset(.flowControlError, _) = s.receivedData(length: 1, fin: false) else {
            Issue.record("expected a flow-control reset")
            return
        }
        #expect(s.isClosed)
        #expect(s.receivedData(length: 1, fin: false) == .discard)
    }

    @Test func creditReturnsOnlyAfterConsumptionAndInBatches() {
        var s = StreamStateMachine.accepting(peerInitialWindow: 10, localInitialWindow: 1000)
        #expect(s.receivedData(length: 1000, fin: false) == .deliver(fin: false))
        #expect(s.receiveWindow.granted == 0)
        #expect(s.consumed(100) == nil)  // below a quarter
        #expect(s.consumed(149) == nil)
        #expect(s.consumed(1) == 250)  // quarter reached
        #expect(s.receiveWindow.granted == 250)
        #expect(s.receivedData(length: 250, fin: false) == .deliver(fin: false))
    }

    /// Each direction's half-close is a state of its own: open → FIN queued → FIN sent one way, open → FIN
    /// received → FIN delivered the other; the stream ends only when both are done.
    @Test func halfCloseEachWayThenClosed() {
        var s = StreamStateMachine.opening(peerInitialWindow: 100, localInitialWindow: 100)
        _ = s.receivedOpenOK()
        #expect(s.endpointInputEnded() == .queueFin)
        #expect(s.outbound == .finQueued)
        #expect(s.finQueued)
        #expect(!s.wantsEndpointInput)  // nothing more is read after the end
        #expect(s.canSend)  // but what was read, and the FIN, still go out
        #expect(s.endpointInputEnded() == .none)  // twice is once
        s.sentData(length: 0, fin: true)
        #expect(s.outbound == .finSent)
        #expect(!s.canSend)
        #expect(s.finishIfDone() == false)
        // The other direction keeps flowing after our FIN.
        #expect(s.receivedData(length: 10, fin: false) == .deliver(fin: false))
        #expect(s.receivedData(length: 5, fin: true) == .deliver(fin: true))
        #expect(s.inbound == .finReceived)
        #expect(s.finAwaitingDelivery)
        #expect(s.finishIfDone() == false)  // received is not delivered
        s.deliveredFin()
        #expect(s.inbound == .finDelivered)
        #expect(s.finishIfDone() == true)
        #expect(s.isClosed)
    }

    @Test func anEndpointThatClosesAfterItsFinWasDeliveredIsEndingNotResetting() {
        var s = StreamStateMachine.accepting(peerInitialWindow: 100, localInitialWindow: 100)
        s.accepted()
        #expect(s.receivedData(length: 3, fin: true) == .deliver(fin: true))
        s.deliveredFin()
        // NIO reports a full close once both halves are shut: after our FIN, that close is its end of file.
        #expect(s.endpointClosed() == .queueFin)
        s.sentData(length: 0, fin: true)
        #expect(s.finishIfDone() == true)
    }

    @Test func anEndpointThatClosesBeforeItsFinResetsTheStream() {
        var s = StreamStateMachine.opening(peerInitialWindow: 100, localInitialWindow: 100)
        _ = s.receivedOpenOK()
        #expect(s.receivedData(length: 3, fin: true) == .deliver(fin: true))  // received, not yet delivered
        #expect(s.endpointClosed() == .reset(.closed, ""))
        #expect(s.isClosed)
        #expect(s.endpointClosed() == .none)
    }

    @Test func dataAfterFinIsAProtocolError() {
        var s = StreamStateMachine.accepting(peerInitialWindow: 100, localInitialWindow: 100)
        #expect(s.receivedData(length: 1, fin: true) == .deliver(fin: true))
        guard case .reset(.protocolError, _) = s.receivedData(length: 1, fin: false) else {
            Issue.record("expected a protocol-error reset")
            return
        }
    }

    @Test func openOKTwiceIsAProtocolError() {
        var s = StreamStateMachine.opening(peerInitialWindow: 1, localInitialWindow: 1)
        #expect(s.receivedOpenOK() == .opened)
        guard case .reset(.protocolError, _) = s.receivedOpenOK() else {
            Issue.record("expected a protocol-error reset")
            return
        }
    }

    @Test func windowOverflowIsAFlowControlError() {
        var s = StreamStateMachine.opening(peerInitialWindow: 0x7FFF_FFFF, localInitialWindow: 1)
        guard case .reset(.flowControlError, _) = s.receivedWindowUpdate(1) else {
            Issue.record("expected a flow-control reset")
            return
        }
    }

    @Test func framesAfterResetAreDiscarded() {
        var s = StreamStateMachine.opening(peerInitialWindow: 10, localInitialWindow: 10)
        #expect(s.receivedReset() == true)  // it was still opening: its opener learns the failure
        #expect(s.receivedReset() == false)
        #expect(s.receivedOpenOK() == .discard)
        #expect(s.receivedData(length: 1, fin: false) == .discard)
        #expect(s.receivedWindowUpdate(5) == .discard)
        #expect(s.endpointInputEnded() == .none)
        #expect(!s.canSend)
    }

    @Test func acceptorHoldsDataUntilAccepted() {
        var s = StreamStateMachine.accepting(peerInitialWindow: 10, localInitialWindow: 10)
        #expect(!s.canSend)  // no DATA before OPEN_OK
        s.accepted()
        #expect(s.canSend)
        #expect(s.phase == .open)
    }

    @Test func datagramStreamsHaveNoHalfClose() {
        var s = StreamStateMachine.opening(peerInitialWindow: 100, localInitialWindow: 100, kind: .datagram)
        #expect(s.endpointInputEnded() == .none)  // a datagram socket has no end of file
        #expect(s.wantsEndpointInput)
        guard case .reset(.protocolError, _) = s.receivedData(length: 4, fin: true) else {
            Issue.record("expected a protocol-error reset for FIN on a datagram stream")
            return
        }
    }
}
