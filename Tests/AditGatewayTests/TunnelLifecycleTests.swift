import AditGateway
import NIOCore
import Testing

/// The client's tunnel lifecycle, without sockets: every event, including the races between an old session's
/// end and a new dial.
@Suite struct TunnelLifecycleTests {
    func lifecycle(_ servers: [String] = ["ws://a/"]) -> TunnelLifecycle {
        var settings = TunnelLifecycle.Settings(servers: servers)
        settings.reconnectMinimum = .milliseconds(500)
        settings.reconnectMaximum = .seconds(15)
        return TunnelLifecycle(settings: settings)
    }

    func dials(_ actions: [TunnelLifecycle.Action]) -> [TunnelLifecycle.Attempt] {
        actions.compactMap { if case .dial(let attempt, _) = $0 { return attempt } else { return nil } }
    }

    func retries(_ actions: [TunnelLifecycle.Action]) -> [(TunnelLifecycle.Attempt, Int, TimeAmount)] {
        actions.compactMap { if case .scheduleRetry(let a, let s, let d) = $0 { return (a, s, d) } else { return nil } }
    }

    @Test func startDialsThenReadyOpensTheWaitingConnections() {
        var l = lifecycle()
        #expect(dials(l.start()) == [1])
        #expect(l.start().isEmpty)  // twice is once
        #expect(l.state == .dialing(attempt: 1, server: 0))
        let ready = l.sessionReady(1)
        #expect(ready.contains(.openWaiting(attempt: 1)))
        #expect(l.readyAttempt == 1)
        #expect(l.waitRefusal == nil)
    }

    /// The race of the old TunnelManager: GOAWAY, a new dial, then the old session closes while the new dial is in
    /// flight. The close is stale: it must neither start a second dial nor touch the one under way.
    @Test func goAwayThenTheOldSessionClosingDuringTheNewDialDoesNotDialTwice() {
        var l = lifecycle()
        _ = l.start()
        _ = l.sessionReady(1)
        let afterGoAway = l.goAwayReceived(1, reason: "restart")
        #expect(dials(afterGoAway) == [2])
        #expect(l.draining == [1])
        let afterOldClose = l.sessionClosed(1, reason: "the server closed it")
        #expect(afterOldClose.isEmpty)
        #expect(l.state == .dialing(attempt: 2, server: 0))
        #expect(l.draining.isEmpty)
        // The new dial completes normally.
        #expect(l.sessionReady(2).contains(.openWaiting(attempt: 2)))
    }

    @Test func theOldSessionClosingBeforeGoAwayIsProcessedIsTheCurrentOneLost() {
        var l = lifecycle()
        _ = l.start()
        _ = l.sessionReady(1)
        let lost = l.sessionClosed(1, reason: "connection reset")
        #expect(retries(lost).map(\.0) == [2])
        #expect(retries(lost).first?.2 == .milliseconds(500))
        // GOAWAY of that same, now dead, session changes nothing.
        #expect(l.goAwayReceived(1, reason: "late").isEmpty)
        #expect(dials(l.retryDue(2)) == [2])
    }

    @Test func aStaleSessionThatComesUpLateIsClosed() {
        var l = lifecycle()
        _ = l.start()
        _ = l.dialFailed(1, reason: "refused")
        // Attempt 1's session reports ready after we gave up on it (it was never current).
        #expect(l.sessionReady(1) == [.closeSession(attempt: 1)])
    }

    @Test func backoffDoublesUpToTheMaximumAndResetsWhenUp() {
        var l = lifecycle()
        _ = l.start()
        var attempt = 1
        var delays: [TimeAmount] = []
        for _ in 0..<8 {
            let actions = l.dialFailed(attempt, reason: "refused")
            let (next, _, delay) = retries(actions)[0]
            delays.append(delay)
            _ = l.retryDue(next)
            attempt = next
        }
        #expect(delays == [.milliseconds(500), .seconds(1), .seconds(2), .seconds(4), .seconds(8), .seconds(15), .seconds(15), .seconds(15)])
        #expect(l.failuresInARow == 8)
        #expect(l.lastFailure == "refused")
        _ = l.sessionReady(attempt)
        #expect(l.failuresInARow == 0)
        #expect(l.lastFailure == nil)
    }

    @Test func aLongOutageDoesNotFloodTheLog() {
        var l = lifecycle()
        _ = l.start()
        var attempt = 1
        var warnings = 0
        for _ in 0..<30 {
            let actions = l.dialFailed(attempt, reason: "refused")
            for case .log(let line) in actions where line.level == .warning { warnings += 1 }
            attempt = retries(actions)[0].0
            _ = l.retryDue(attempt)
        }
        #expect(warnings == 3 + 3)  // the first three, then every tenth
    }

    @Test func severalServersAreTriedInOrderBeforeWaiting() {
        var l = lifecycle(["ws://a/", "ws://b/", "ws://c/"])
        _ = l.start()
        let first = retries(l.dialFailed(1, reason: "a is down"))[0]
        #expect(first.1 == 1 && first.2 == .zero)  // b at once
        _ = l.retryDue(first.0)
        let second = retries(l.dialFailed(first.0, reason: "b is down"))[0]
        #expect(second.1 == 2 && second.2 == .zero)  // c at once
        _ = l.retryDue(second.0)
        let third = retries(l.dialFailed(second.0, reason: "c is down"))[0]
        #expect(third.1 == 0 && third.2 == .milliseconds(500))  // a round failed: wait, then a again
        _ = l.retryDue(third.0)
        _ = l.sessionReady(third.0)
        #expect(l.state == .ready(attempt: third.0, server: 0))
    }

    @Test func aLostTunnelComesBackToTheSameServerFirst() {
        var l = lifecycle(["ws://a/", "ws://b/"])
        _ = l.start()
        let toB = retries(l.dialFailed(1, reason: "a is down"))[0]
        _ = l.retryDue(toB.0)
        _ = l.sessionReady(toB.0)
        let lost = retries(l.sessionClosed(toB.0, reason: "reset"))[0]
        #expect(lost.1 == 1)
    }

    @Test func aPermanentFailureStopsRetryingAndRefusesWaiters() {
        var l = lifecycle()
        _ = l.start()
        let actions = l.dialFailed(1, reason: "the server refused the credentials (401)", permanent: true)
        #expect(retries(actions).isEmpty)
        #expect(actions.contains(.failWaiting(reason: "the server refused the credentials (401)")))
        #expect(l.waitRefusal == "the server refused the credentials (401)")
    }

    @Test func aSessionThatClosesBeforeItIsUpIsAFailedDial() {
        var l = lifecycle()
        _ = l.start()
        let actions = l.sessionClosed(1, reason: "closed during the upgrade")
        #expect(retries(actions).count == 1)
        #expect(l.lastFailure == "closed during the upgrade")
    }

    @Test func stopDrainsEverySessionAndRefusesWhatWaits() {
        var l = lifecycle()
        _ = l.start()
        _ = l.sessionReady(1)
        _ = l.goAwayReceived(1, reason: "restart")  // 1 drains, 2 is dialled
        let actions = l.stop()
        #expect(actions.contains(.failWaiting(reason: "the client is shutting down")))
        #expect(actions.contains(.drainSessions([1, 2])))
        #expect(l.state == .stopped)
        #expect(l.waitRefusal == "the client is shutting down")
        // After stop nothing starts again, whatever arrives.
        #expect(l.sessionReady(2) == [.closeSession(attempt: 2)])
        #expect(l.sessionClosed(1, reason: "done").isEmpty)
        #expect(l.sessionClosed(2, reason: "done").isEmpty)
        #expect(l.retryDue(3).isEmpty)
        #expect(l.stop().isEmpty)
        #expect(l.liveSessions.isEmpty)
    }

    @Test func aRetryTimerOfAnOldAttemptIsIgnored() {
        var l = lifecycle()
        _ = l.start()
        let next = retries(l.dialFailed(1, reason: "x"))[0].0
        _ = l.retryDue(next)
        #expect(l.retryDue(next).isEmpty)  // fired twice
        #expect(l.retryDue(next - 1).isEmpty)
        #expect(l.dialFailed(next - 1, reason: "old").isEmpty)
    }
}
