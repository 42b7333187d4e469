import AditMux
import NIOCore
import NIOEmbedded
import Testing

/// Opening a stream yields its outcome, as swift-nio-http2's `createStreamChannel(promise:)` does: fronts answer
/// their own protocol (SOCKS reply, HTTP status, exit status) from it.
@Suite struct MuxOpenOutcomeTests {
    let target = MuxTarget(hostText: "10.1.2.3", port: 443)

    @Test func openOKSucceedsThePromise() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        let promise = pair.loop.makePromise(of: Void.self)
        let id = try #require(pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a),
                                                        promise: promise))
        var outcome: Result<Void, any Error>?
        promise.futureResult.assumeIsolated().whenComplete { outcome = $0 }
        #expect(outcome == nil)  // not before the answer
        try pair.pump()
        guard case .success = try #require(outcome) else { Issue.record("expected success"); return }
        #expect(pair.serverDelegate.opens.map(\.0) == [id])
        #expect(a.isActive)
    }

    @Test(arguments: [ResetCode.notAllowed, .refused, .unreachable, .timedOut])
    func aResetFailsThePromiseWithItsCodeAndLeavesTheConnectionToTheOpener(code: ResetCode) throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.reject(id, code: code, reason: "because") }
        let promise = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a), promise: promise)
        var failure: (any Error)?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 }
        try pair.pump()
        #expect(failure as? MuxStreamOpenError == .reset(code, reason: "because"))
        #expect((failure as? MuxStreamOpenError)?.code == code)
        // The opener answers in its own protocol before closing: the connection is still open, and unbound.
        #expect(a.isActive)
        try a.writeOutbound(ByteBuffer(string: "HTTP/1.1 403 Forbidden\r\n\r\n"))
        #expect(String(decoding: try a.drainOutboundBytes(), as: UTF8.self).hasPrefix("HTTP/1.1 403"))
        try a.writeInbound(ByteBuffer(string: "late bytes"))  // nobody reads them for the tunnel any more
        try pair.pump()
        #expect(pair.clientMux.streamCount == 0)
        #expect(pair.serverMux.streamCount == 0)
    }

    @Test func anOpenOnAClosedOrDrainingSessionFailsAtOnceAndIsRetryable() throws {
        var pair = try MuxPair()
        let (busy, _) = try pair.endpoint()
        try pair.clientMux.openStream(to: target, endpoint: busy)  // keeps the session draining, not closed
        pair.clientMux.beginDrain(reason: "test")
        try pair.pump()
        let (a, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        #expect(pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a), promise: promise) == nil)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        #expect(failure == .session(.draining, unprocessed: true))
        #expect(failure?.isRetryable == true)
        #expect(a.isActive)
        try busy.close().wait()
        try pair.pump()
        let (b, _) = try pair.endpoint()
        let late = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(b), promise: late)
        var closedFailure: MuxStreamOpenError?
        late.futureResult.assumeIsolated().whenFailure { closedFailure = $0 as? MuxStreamOpenError }
        #expect(pair.clientMux.isClosed)
        #expect(closedFailure == .session(.sessionClosed, unprocessed: true))
    }

    /// GOAWAY names the last stream the peer accepted; ours above it were never seen, so they may go to the
    /// next tunnel — as long as nothing of them was read yet.
    @Test func streamsAboveTheGoAwaysLastIDFailAsUnprocessed() throws {
        var pair = try MuxPair()
        let (seen, _) = try pair.endpoint()
        let (unseen, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        try pair.clientMux.openStream(to: target, endpoint: seen)
        try pair.pump()
        // The server drains before the next OPEN reaches it.
        pair.serverMux.beginDrain(reason: "restart")
        let promise = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(unseen), promise: promise)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        try pair.pump()
        #expect(failure?.isRetryable == true)
        #expect(unseen.isActive)
        #expect(seen.isActive)  // the accepted stream goes on
        #expect(pair.serverDelegate.opens.count == 1)
    }

    @Test func theLocalConnectionClosingBeforeTheAnswerFailsTheOpen() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a), promise: promise)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        try a.close().wait()
        #expect(failure == .endpointClosed)
        try pair.pump()
        #expect(pair.serverMux.streamCount == 0)  // the server's side was reset
    }

    @Test func theTunnelEndingBeforeTheAnswerFailsTheOpen() throws {
        let pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a), promise: promise)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        try pair.client.close().wait()
        #expect(failure == .session(.tunnelClosed, unprocessed: true))
        #expect(a.isActive)  // handed back to the opener
    }

    /// A stream reset after it opened ends its local connection with an abort (RST), never a clean end of file:
    /// truncation must not look like success.
    @Test func aResetAfterOpeningAbortsTheLocalConnection() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        let aborts = AbortRecorder()
        try a.pipeline.syncOperations.addHandler(aborts, position: .first)
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        try b.close().wait()  // the target went away without a FIN of its own: RESET(closed)
        try pair.pump()
        #expect(!a.isActive)
        #expect(aborts.closedWithoutHalfClose)
    }
}

/// Sees whether a channel was closed fully (not with a half-close first).
final class AbortRecorder: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var closedWithoutHalfClose = false
    private var halfClosed = false

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output { halfClosed = true }
        if mode == .all && !halfClosed { closedWithoutHalfClose = true }
        context.close(mode: mode, promise: promise)
    }
}

@Suite struct MuxSessionLimitTests {
    let target = MuxTarget(hostText: "10.1.2.3", port: 80)

    /// Bytes the targets have not taken count against the session: past the budget new streams are refused,
    /// and once they are read the session takes streams again.
    @Test func unreadBytesOverTheBudgetRefuseNewStreamsUntilRead() throws {
        var config = MuxConfiguration()
        config.maxBufferedBytes = 100 << 10
        var pair = try MuxPair(configuration: config)
        let (a, _) = try pair.endpoint()
        let stalled = try pair.endpoint().0
        let writes = StallingWrites()
        try stalled.pipeline.syncOperations.addHandler(writes, position: .first)
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: stalled) }
        try pair.clientMux.openStream(to: target, endpoint: a)
        try a.writeInbound(ByteBuffer(repeating: 1, count: 200 << 10))
        try pair.pump()
        #expect(pair.serverMux.bufferedBytes == 200 << 10)
        let (b, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(b), promise: promise)
        try pair.pump()
        guard case .reset(.resourceLimit, let reason) = failure else { Issue.record("expected resource limit, got \(String(describing: failure))"); return }
        #expect(reason.contains("not read"))
        writes.release()
        try pair.pump()
        #expect(pair.serverMux.bufferedBytes == 0)
        let (c, _) = try pair.endpoint()
        let again = pair.loop.makePromise(of: Void.self)
        var opened = false
        again.futureResult.assumeIsolated().whenSuccess { opened = true }
        let (d, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: d) }
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(c), promise: again)
        try pair.pump()
        #expect(opened)
    }

    @Test func anIdleSessionDrainsAfterItsTimeout() throws {
        var config = MuxConfiguration()
        config.idleTimeout = .seconds(5)
        var pair = try MuxPair(configuration: config)
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        pair.loop.advanceTime(by: .seconds(10))
        #expect(!pair.serverMux.isClosed)  // a stream is open: not idle
        try a.close().wait()
        try pair.pump()
        pair.loop.advanceTime(by: .seconds(4))
        try pair.pump()
        #expect(!pair.serverMux.isClosed)
        pair.loop.advanceTime(by: .seconds(2))
        try pair.pump()
        #expect(pair.serverMux.isClosed)
        #expect(pair.serverDelegate.closed)
    }
}

/// Holds every write until released, as a target that stopped reading.
final class StallingWrites: ChannelOutboundHandler {
    typealias OutboundIn = Any
    private var held: [(NIOAny, EventLoopPromise<Void>?)] = []
    private var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        held.append((data, promise))
    }

    func release() {
        guard let context else { return }
        let all = held
        held = []
        for (data, promise) in all { context.write(data, promise: promise) }
        context.flush()
    }
}
