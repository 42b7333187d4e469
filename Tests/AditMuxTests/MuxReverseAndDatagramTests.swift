import AditMux
import NIOCore
import NIOEmbedded
import Testing

/// A datagram endpoint for tests: records what the mux writes, lets the test deliver datagrams.
final class DatagramEndpoint: MuxStreamEndpoint {
    let eventLoop: any EventLoop
    var events: MuxStreamEvents?
    var written: [[UInt8]] = []
    var closed = false
    var aborted = false

    init(loop: any EventLoop) { self.eventLoop = loop }

    func bind(_ events: MuxStreamEvents) { self.events = events }
    func unbind() { events = nil }
    func read() {}
    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        written.append(Array(buffer.readableBytesView))
        promise?.succeed(())
    }
    func flush() {}
    func shutdownOutput() { Issue.record("datagram endpoints have no half-close") }
    func close(abort: Bool) {
        closed = true
        aborted = abort
        events?.closed()
    }

    func deliver(_ bytes: [UInt8]) { events?.received(ByteBuffer(bytes: bytes)) }
}

@Suite struct MuxDatagramTests {
    let dns = MuxTarget(hostText: "10.0.0.53", port: 53)

    @Test func eachDatagramCrossesWholeAndAlone() throws {
        var pair = try MuxPair()
        let local = DatagramEndpoint(loop: pair.loop)
        let remote = DatagramEndpoint(loop: pair.loop)
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: remote) }
        let promise = pair.loop.makePromise(of: Void.self)
        pair.clientMux.openStream(MuxOpenRequest(target: dns, kind: .datagram), endpoint: local, promise: promise)
        let sizes = [0, 1, 17, 512, 1400, 9000, 65_000]
        for size in sizes { local.deliver([UInt8](repeating: UInt8(size & 0xFF), count: size)) }
        try pair.pump()
        #expect(pair.serverDelegate.requests.first?.1.kind == .datagram)
        #expect(remote.written.map(\.count) == sizes)  // boundaries kept, nothing merged or split
        remote.deliver([1, 2, 3])
        remote.deliver([4])
        try pair.pump()
        #expect(local.written == [[1, 2, 3], [4]])
    }

    @Test func aFullQueueDropsDatagramsInsteadOfBlocking() throws {
        var config = MuxConfiguration()
        config.initialWindow = 64 << 10
        config.datagramQueueLimit = 16 << 10
        var pair = try MuxPair(configuration: config)
        let local = DatagramEndpoint(loop: pair.loop)
        let promise = pair.loop.makePromise(of: Void.self)
        // Nobody accepts on the server yet: the window fills, then the queue, then datagrams are dropped.
        pair.clientMux.openStream(MuxOpenRequest(target: dns, kind: .datagram), endpoint: local, promise: promise)
        for _ in 0..<200 { local.deliver([UInt8](repeating: 7, count: 1024)) }
        try pair.pump()
        #expect(pair.clientMux.statistics.datagramsDropped > 0)
        let crossed = pair.clientDataFrames.map(\.1).reduce(0, +)
        #expect(crossed <= 64 << 10)
        // A TCP stream beside it is not held up.
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        try pair.clientMux.openStream(to: MuxTarget(hostText: "10.0.0.1", port: 80), endpoint: a)
        try a.writeInbound(ByteBuffer(string: "GET /"))
        try pair.pump()
        #expect(String(decoding: try b.drainOutboundBytes(), as: UTF8.self) == "GET /")
    }

    /// A UDP flow never ends on its own: a drain ends it at once rather than waiting for its idle timeout, while
    /// TCP streams finish normally.
    @Test func aDrainEndsDatagramStreamsButLetsTCPStreamsFinish() throws {
        var pair = try MuxPair()
        let local = DatagramEndpoint(loop: pair.loop)
        let remote = DatagramEndpoint(loop: pair.loop)
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, target in
            if target == self.dns { session.accept(id, endpoint: remote) } else { session.accept(id, endpoint: b) }
        }
        pair.clientMux.openStream(MuxOpenRequest(target: dns, kind: .datagram), endpoint: local, promise: nil)
        try pair.clientMux.openStream(to: MuxTarget(hostText: "10.0.0.1", port: 80), endpoint: a)
        local.deliver([1])
        try pair.pump()
        #expect(pair.serverMux.streamCount == 2)
        pair.serverMux.beginDrain(reason: "restart")
        try pair.pump()
        #expect(local.closed && remote.closed)
        #expect(pair.serverMux.streamCount == 1)  // the TCP stream goes on
        #expect(!pair.serverMux.isClosed)
        try a.writeInbound(ByteBuffer(string: "still"))
        try pair.pump()
        #expect(String(decoding: try b.drainOutboundBytes(), as: UTF8.self) == "still")
    }

    @Test func aPeerWithoutTheFeatureGetsNoDatagramStream() throws {
        var pair = try MuxPair(serverFeatures: [])
        try pair.pump()
        let local = DatagramEndpoint(loop: pair.loop)
        let promise = pair.loop.makePromise(of: Void.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.clientMux.openStream(MuxOpenRequest(target: dns, kind: .datagram), endpoint: local, promise: promise)
        guard case .unsupported = failure else { Issue.record("expected unsupported, got \(String(describing: failure))"); return }
    }
}

@Suite struct MuxReverseTests {
    let bind = MuxTarget(hostText: "127.0.0.1", port: 0)

    /// The client asks the server to listen; the server confirms with the bound address and opens a reverse
    /// stream for a connection that arrives there; the client learns which listener it belongs to.
    @Test func listenThenAReverseStreamFlowsBothWays() throws {
        var pair = try MuxPair()
        pair.serverDelegate.listenDecision = { session, id, _ in
            session.acceptListen(id, bound: MuxTarget(hostText: "127.0.0.1", port: 40_001))
        }
        let promise = pair.loop.makePromise(of: MuxTarget?.self)
        var bound: MuxTarget??
        promise.futureResult.assumeIsolated().whenSuccess { bound = $0 }
        let listener = try #require(pair.clientMux.listen(MuxListenRequest(bind: bind), promise: promise))
        try pair.pump()
        #expect(bound == .some(MuxTarget(hostText: "127.0.0.1", port: 40_001)))
        #expect(pair.serverDelegate.listens.map(\.0) == [listener])

        // A connection arrives on the server's listener.
        let (arrived, _) = try pair.endpoint()
        let (local, _) = try pair.endpoint()
        pair.clientDelegate.decision = { session, id, _ in session.accept(id, endpoint: local) }
        let opened = pair.loop.makePromise(of: Void.self)
        var openedOK = false
        opened.futureResult.assumeIsolated().whenSuccess { openedOK = true }
        let origin = MuxTarget(hostText: "203.0.113.7", port: 50_000)
        let id = try #require(pair.serverMux.openStream(MuxOpenRequest(target: origin, listener: listener),
                                                        endpoint: ChannelStreamEndpoint(arrived), promise: opened))
        try arrived.writeInbound(ByteBuffer(string: "hello from outside"))
        try pair.pump()
        #expect(openedOK)
        #expect(id.opener == .server)
        #expect(pair.clientDelegate.requests.first?.1 == MuxOpenRequest(target: origin, listener: listener))
        #expect(String(decoding: try local.drainOutboundBytes(), as: UTF8.self) == "hello from outside")
        try local.writeInbound(ByteBuffer(string: "answer"))
        try pair.pump()
        #expect(String(decoding: try arrived.drainOutboundBytes(), as: UTF8.self) == "answer")
    }

    @Test func aRefusedListenFailsItsPromiseWithTheReason() throws {
        var pair = try MuxPair()
        pair.serverDelegate.listenDecision = { session, id, _ in
            session.reject(id, code: .notAllowed, reason: "127.0.0.1:22 is not allowed by --allow-reverse")
        }
        let promise = pair.loop.makePromise(of: MuxTarget?.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.clientMux.listen(MuxListenRequest(bind: MuxTarget(hostText: "127.0.0.1", port: 22)), promise: promise)
        try pair.pump()
        #expect(failure == .reset(.notAllowed, reason: "127.0.0.1:22 is not allowed by --allow-reverse"))
        #expect(pair.serverMux.listenerCount == 0)
        #expect(pair.clientMux.listenerCount == 0)
    }

    @Test func closingAListenerTellsThePeerAndLateStreamsAreRefused() throws {
        var pair = try MuxPair()
        pair.serverDelegate.listenDecision = { session, id, _ in session.acceptListen(id, bound: MuxTarget(hostText: "127.0.0.1", port: 40_002)) }
        let listener = try #require(pair.clientMux.listen(MuxListenRequest(bind: bind), promise: nil))
        try pair.pump()
        pair.clientMux.closeListener(listener)
        try pair.pump()
        #expect(pair.serverDelegate.closedListeners.map(\.0) == [listener])
        let (arrived, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.serverMux.openStream(MuxOpenRequest(target: bind, listener: listener), endpoint: ChannelStreamEndpoint(arrived),
                                  promise: promise)
        guard case .reset = failure else { Issue.record("expected a refusal, got \(String(describing: failure))"); return }
    }

    @Test func aReverseOpenNamingAListenerWeNeverHadIsRefusedNotObeyed() throws {
        var pair = try MuxPair()
        // The server claims a listener the client never asked for: the client must not connect anywhere.
        var bytes = ByteBuffer()
        MuxFrameCodec.encode(.open(StreamID(2), MuxOpenRequest(target: bind, listener: StreamID(1))), into: &bytes)
        try pair.client.writeInbound(bytes)
        // Stream 1 was never opened by the client: a protocol error ends the session.
        #expect(pair.clientMux.isClosed)
        #expect(pair.clientDelegate.opens.isEmpty)
        _ = try? pair.pump()
    }

    @Test func aServerThatDoesNotAnnounceReverseGetsNoListen() throws {
        var pair = try MuxPair(serverFeatures: [])
        try pair.pump()
        let promise = pair.loop.makePromise(of: MuxTarget?.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.clientMux.listen(MuxListenRequest(bind: bind), promise: promise)
        #expect(failure == .unsupported("reverse forwarding (-R)"))
    }

    @Test func drainingClosesListenersOnBothSides() throws {
        var pair = try MuxPair()
        pair.serverDelegate.listenDecision = { session, id, _ in session.acceptListen(id, bound: MuxTarget(hostText: "127.0.0.1", port: 40_002)) }
        let listener = try #require(pair.clientMux.listen(MuxListenRequest(bind: bind), promise: nil))
        try pair.pump()
        #expect(pair.serverMux.listenerCount == 1)
        pair.serverMux.beginDrain(reason: "restart")
        try pair.pump()
        #expect(pair.serverMux.listenerCount == 0)
        #expect(pair.clientMux.listenerCount == 0)
        #expect(pair.clientDelegate.closedListeners.map(\.0) == [listener])
        #expect(pair.serverDelegate.closedListeners.map(\.0) == [listener])
    }
}
