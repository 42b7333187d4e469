import AditMux
import AditTransport
import Logging
import NIOCore
import NIOEmbedded
import Testing

/// Records half-closes that EmbeddedChannel would otherwise turn into full closes.
final class HalfCloseRecorder: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var outputClosed = false

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output {
            outputClosed = true
            promise?.succeed(())
        } else {
            context.close(mode: mode, promise: promise)
        }
    }
}

/// Fails writes that come after a close, as a real socket does (EmbeddedChannel would keep them).
final class RealisticCloseHandler: ChannelOutboundHandler {
    typealias OutboundIn = Any
    private var closed = false

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if closed {
            promise?.fail(ChannelError.ioOnClosedChannel)
        } else {
            context.write(data, promise: promise)
        }
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .all { closed = true }
        context.close(mode: mode, promise: promise)
    }
}

/// Counts the reads a stream endpoint's channel is asked for (adit reads endpoints on demand, autoRead off).
final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Any
    var reads = 0

    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

final class AcceptingDelegate: MuxSessionDelegate {
    var ready = false
    var opens: [(StreamID, MuxTarget)] = []
    var requests: [(StreamID, MuxOpenRequest)] = []
    var listens: [(StreamID, MuxListenRequest)] = []
    var closedListeners: [(StreamID, ResetCode)] = []
    var goAways = 0
    var closed = false
    var decision: ((MuxHandler, StreamID, MuxTarget) -> Void)?
    var listenDecision: ((MuxHandler, StreamID, MuxListenRequest) -> Void)?

    func muxSessionDidBecomeReady(_ session: MuxHandler) { ready = true }
    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest) {
        opens.append((stream, request.target))
        requests.append((stream, request))
        decision?(session, stream, request.target)
    }
    func muxSession(_ session: MuxHandler, didReceiveListen listener: StreamID, request: MuxListenRequest) {
        listens.append((listener, request))
        if let listenDecision { listenDecision(session, listener, request) }
        else { session.reject(listener, code: .notAllowed, reason: "no") }
    }
    func muxSession(_ session: MuxHandler, listenerDidClose listener: StreamID, code: ResetCode, reason: String) {
        closedListeners.append((listener, code))
    }
    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) { goAways += 1 }
    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) { closed = true }
}

extension MuxHandler {
    /// Test shorthand, as the `-L` front does it: a TCP stream to `target` on `channel`, closed if it fails.
    /// Throws what made an immediate failure.
    @discardableResult
    func openStream(to target: MuxTarget, endpoint channel: any Channel) throws -> StreamID {
        let promise = channel.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenFailure { _ in channel.close(promise: nil) }
        guard let id = openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(channel), promise: promise)
        else {
            try promise.futureResult.wait()
            throw MuxSessionError.sessionClosed
        }
        return id
    }

    func accept(_ id: StreamID, endpoint channel: any Channel) {
        accept(id, endpoint: ChannelStreamEndpoint(channel))
    }
}

/// Two sessions joined back to back on one embedded loop; `pump()` carries messages both ways.
struct MuxPair {
    let loop = EmbeddedEventLoop()
    let client: EmbeddedChannel
    let server: EmbeddedChannel
    let clientMux: MuxHandler
    let serverMux: MuxHandler
    let clientDelegate = AcceptingDelegate()
    let serverDelegate = AcceptingDelegate()
    /// Every DATA frame the client sent, by stream, for flow-control and fairness assertions.
    var clientDataFrames: [(StreamID, Int)] = []

    init(configuration: MuxConfiguration = .init(), serverFeatures: MuxFeatures = [.reverse, .datagrams],
         clientFeatures: MuxFeatures = [.datagrams]) throws {
        let logger = Logger(label: "test")
        var clientConfiguration = configuration
        clientConfiguration.features = clientFeatures
        var serverConfiguration = configuration
        serverConfiguration.features = serverFeatures
        clientMux = MuxHandler(role: .client, configuration: clientConfiguration, logger: logger, delegate: clientDelegate)
        serverMux = MuxHandler(role: .server, configuration: serverConfiguration, logger: logger, delegate: serverDelegate)
        client = EmbeddedChannel(handlers: [RealisticCloseHandler(), clientMux], loop: loop)
        server = EmbeddedChannel(handlers: [RealisticCloseHandler(), serverMux], loop: loop)
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
        try pump()
    }

    func endpoint() throws -> (EmbeddedChannel, HalfCloseRecorder) {
        let recorder = HalfCloseRecorder()
        let channel = EmbeddedChannel(handler: recorder, loop: loop)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 3)).wait()
        return (channel, recorder)
    }

    /// Moves messages until both directions are quiet. Returns the number of messages moved.
    @discardableResult
    mutating func pump(maxRounds: Int = 1000) throws -> Int {
        var moved = 0
        for _ in 0..<maxRounds {
            loop.run()
            var progress = false
            while let parts = try client.readOutbound(as: TunnelMessage.self) {
                let message = parts.joined()
                var copy = message
                while let frame = try MuxFrameCodec.decode(from: &copy) {
                    if case .data(let id, let payload, _) = frame { clientDataFrames.append((id, payload.readableBytes)) }
                }
                try server.writeInbound(message)
                progress = true
                moved += 1
            }
            while let message = try server.readOutbound(as: TunnelMessage.self) {
                try client.writeInbound(message.joined())
                progress = true
                moved += 1
            }
            if !progress { break }
        }
        return moved
    }
}

extension EmbeddedChannel {
    func drainOutboundBytes() throws -> [UInt8] {
        var out: [UInt8] = []
        while let b = try readOutbound(as: ByteBuffer.self) { out += b.readableBytesView }
        return out
    }
}

@Suite struct MuxHandlerTests {
    let target = MuxTarget(hostText: "127.0.0.1", port: 9)

    @Test func helloExchangeMakesBothSidesReady() throws {
        let pair = try MuxPair()
        #expect(pair.clientDelegate.ready)
        #expect(pair.serverDelegate.ready)
        #expect(pair.clientMux.isReady)
    }

    @Test func earlyDataIsHeldUntilAcceptedThenFlowsBothWays() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        let id = try pair.clientMux.openStream(to: target, endpoint: a)
        try a.writeInbound(ByteBuffer(string: "early bytes"))  // before any answer
        try pair.pump()
        #expect(pair.serverDelegate.opens.count == 1)
        #expect(pair.serverDelegate.opens[0].0 == id)
        #expect(pair.serverDelegate.opens[0].1 == target)
        pair.serverMux.accept(id, endpoint: b)
        try pair.pump()
        #expect(String(decoding: try b.drainOutboundBytes(), as: UTF8.self) == "early bytes")
        try b.writeInbound(ByteBuffer(string: "answer"))
        try pair.pump()
        #expect(String(decoding: try a.drainOutboundBytes(), as: UTF8.self) == "answer")
    }

    @Test func rejectedStreamClosesTheLocalConnection() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.reject(id, code: .notAllowed, reason: "policy") }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        #expect(!a.isActive)
        #expect(pair.clientMux.streamCount == 0)
        #expect(pair.serverMux.streamCount == 0)
    }

    @Test func senderNeverExceedsTheWindowBeforeConsumption() throws {
        var config = MuxConfiguration()
        config.initialWindow = 64 << 10
        var pair = try MuxPair(configuration: config)
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        let id = try pair.clientMux.openStream(to: target, endpoint: a)
        // Offer 200 KiB while the server has not accepted: only the window may cross.
        var sent: [UInt8] = []
        for i in 0..<50 {
            let chunk = [UInt8](repeating: UInt8(i), count: 4096)
            sent += chunk
            try a.writeInbound(ByteBuffer(bytes: chunk))
            try pair.pump()
        }
        let crossed = pair.clientDataFrames.filter { $0.0 == id }.map(\.1).reduce(0, +)
        #expect(crossed <= 64 << 10)
        #expect(crossed > 0)
        // Accepting consumes (embedded writes complete at once), credit flows back, the rest follows.
        pair.serverMux.accept(id, endpoint: b)
        try pair.pump()
        for _ in 0..<20 {
            try a.writeInbound(ByteBuffer())
            try pair.pump()
        }
        #expect(try b.drainOutboundBytes() == sent)
    }

    @Test func halfCloseTravelsAsFinAndTheOtherDirectionKeepsFlowing() throws {
        var pair = try MuxPair()
        let (a, recorderA) = try pair.endpoint()
        let (b, recorderB) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try a.writeInbound(ByteBuffer(string: "request"))
        a.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.pump()
        #expect(String(decoding: try b.drainOutboundBytes(), as: UTF8.self) == "request")
        #expect(recorderB.outputClosed)  // the target saw EOF
        #expect(!recorderA.outputClosed)
        try b.writeInbound(ByteBuffer(string: "response after EOF"))
        try pair.pump()
        #expect(String(decoding: try a.drainOutboundBytes(), as: UTF8.self) == "response after EOF")
        b.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.pump()
        #expect(recorderA.outputClosed)
        #expect(pair.clientMux.streamCount == 0)
        #expect(pair.serverMux.streamCount == 0)
    }

    /// While the tunnel is backed up, what the endpoints have read waits above it; past the session's high-water
    /// mark no endpoint is read, however many streams there are, until the scheduler has framed half of it.
    @Test func theSessionsReadAheadIsBoundedAcrossStreams() throws {
        var config = MuxConfiguration()
        config.streamReadHighWater = 48 << 10
        config.sessionReadHighWater = 96 << 10
        var pair = try MuxPair(configuration: config)
        var endpoints: [(EmbeddedChannel, ReadCounter)] = []
        for _ in 0..<6 {
            let (channel, _) = try pair.endpoint()
            let counter = ReadCounter()
            try channel.pipeline.syncOperations.addHandler(counter, position: .first)
            _ = try pair.clientMux.openStream(to: target, endpoint: channel)
            endpoints.append((channel, counter))
        }
        try pair.pump()
        pair.client.isWritable = false
        // Each endpoint delivers 40 KiB whenever it is asked to read; the tunnel takes nothing. A stream is asked
        // again only while the session holds less than 96 KiB, so it ends below 96 KiB plus the reads already
        // asked for (one per stream); the per-stream limit alone would let all six read twice (480 KiB).
        for _ in 0..<4 {
            for (channel, counter) in endpoints where counter.reads > 0 {
                counter.reads = 0
                channel.pipeline.fireChannelRead(ByteBuffer(repeating: 7, count: 40 << 10))
                channel.pipeline.fireChannelReadComplete()
            }
        }
        let asking = endpoints.filter { $0.1.reads > 0 }.count
        #expect(pair.clientMux.bufferedOutboundBytes <= 96 << 10 + 6 * (40 << 10))
        #expect(asking == 0, "\(asking) endpoints still asked to read past the session's high-water mark")
        // The tunnel drains: the held-back streams are read again.
        pair.client.isWritable = true
        pair.client.pipeline.fireChannelWritabilityChanged()
        try pair.pump()
        #expect(pair.clientMux.bufferedOutboundBytes == 0)
        #expect(endpoints.filter { $0.1.reads > 0 }.count == 6)
    }

    @Test func aSmallStreamIsServedBesideABulkOne() throws {
        var config = MuxConfiguration()
        config.streamReadHighWater = 1 << 20
        var pair = try MuxPair(configuration: config)
        let (bulk, _) = try pair.endpoint()
        let (small, _) = try pair.endpoint()
        let bulkID = try pair.clientMux.openStream(to: target, endpoint: bulk)
        let smallID = try pair.clientMux.openStream(to: target, endpoint: small)
        try pair.pump()
        // Queue 512 KiB on the bulk stream and 10 bytes on the small one in the same event-loop turn.
        bulk.pipeline.fireChannelRead(ByteBuffer(repeating: 1, count: 512 << 10))
        small.pipeline.fireChannelRead(ByteBuffer(repeating: 2, count: 10))
        bulk.pipeline.fireChannelReadComplete()
        try pair.pump()
        let order = pair.clientDataFrames.map(\.0)
        let firstSmall = try #require(order.firstIndex(of: smallID))
        let bulkBefore = pair.clientDataFrames[..<firstSmall].filter { $0.0 == bulkID }.map(\.1).reduce(0, +)
        #expect(bulkBefore <= config.quantum)
    }

    @Test func garbageFromThePeerEndsTheSessionWithGoAway() throws {
        let pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.client.writeInbound(ByteBuffer(bytes: [0, 0, 9, 0, 0]))  // truncated frame
        pair.loop.run()
        var sawGoAway = false
        while let parts = try pair.client.readOutbound(as: TunnelMessage.self) {
            var message = parts.joined()
            while let frame = try? MuxFrameCodec.decode(from: &message) {
                if case .goAway(_, .protocolError, _) = frame { sawGoAway = true }
            }
        }
        #expect(sawGoAway)
        #expect(pair.clientMux.isClosed)
        #expect(pair.clientDelegate.closed)
        #expect(!a.isActive)  // streams are reset with the session
    }

    @Test func streamsOfAClosedTunnelAreClosed() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        #expect(b.isActive)
        try pair.server.close().wait()
        #expect(!b.isActive)
        #expect(pair.serverDelegate.closed)
    }

    @Test func drainRefusesNewStreamsAndClosesWhenIdle() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        pair.serverMux.beginDrain(reason: "test")
        try pair.pump()
        let (c, _) = try pair.endpoint()
        #expect(throws: MuxStreamOpenError.session(.draining, unprocessed: true)) {
            try pair.clientMux.openStream(to: target, endpoint: c)
        }
        #expect(!pair.serverMux.isClosed)  // a stream is still open
        try a.close().wait()
        try pair.pump()
        #expect(pair.serverMux.isClosed)
    }

    /// The last stream of a draining tunnel ends with its answer and FIN in one frame: that frame must reach
    /// the peer before the tunnel closes (it was once dropped, because the close ran inside the flush).
    @Test func theLastFrameOfADrainingTunnelIsSentBeforeItCloses() throws {
        var pair = try MuxPair()
        let (a, recorderA) = try pair.endpoint()
        let (b, recorderB) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try a.writeInbound(ByteBuffer(string: "request"))
        a.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.pump()
        pair.serverMux.beginDrain(reason: "test")
        try pair.pump()
        #expect(recorderB.outputClosed)
        #expect(!pair.serverMux.isClosed)
        try b.writeInbound(ByteBuffer(string: "final answer"))   // answer and EOF in the same turn
        b.pipeline.fireUserInboundEventTriggered(ChannelEvent.inputClosed)
        try pair.pump()
        #expect(pair.serverMux.isClosed)
        #expect(String(decoding: try a.drainOutboundBytes(), as: UTF8.self) == "final answer")
        #expect(recorderA.outputClosed)
    }

    /// Data and the end of the tunnel often arrive in one read: the data still reaches the local socket.
    @Test func dataReceivedJustBeforeTheTunnelEndsIsDelivered() throws {
        var pair = try MuxPair()
        let (a, _) = try pair.endpoint()
        let (b, _) = try pair.endpoint()
        pair.serverDelegate.decision = { session, id, _ in session.accept(id, endpoint: b) }
        _ = try pair.clientMux.openStream(to: target, endpoint: a)
        try pair.pump()
        try b.writeInbound(ByteBuffer(string: "last words"))
        b.pipeline.fireChannelReadComplete()
        pair.loop.run()
        let message = try #require(try pair.server.readOutbound(as: TunnelMessage.self))
        pair.client.pipeline.fireChannelRead(message.joined())  // no read-complete: the endpoint is not flushed yet
        try pair.client.close().wait()
        pair.loop.run()
        #expect(String(decoding: try a.drainOutboundBytes(), as: UTF8.self) == "last words")
        #expect(!a.isActive)
    }

    /// A peer that pings and never reads must not make us queue a PONG per PING: while the tunnel is not
    /// writable only the latest PING is answered, once it is writable again.
    @Test func pingsWhileTheTunnelIsBackedUpGetOneAnswer() throws {
        let pair = try MuxPair()
        pair.server.isWritable = false
        var pings = ByteBuffer()
        for opaque in UInt64(1)...1000 { MuxFrameCodec.encode(.ping(opaque), into: &pings) }
        try pair.server.writeInbound(pings)
        pair.loop.run()
        func pongs() throws -> [UInt64] {
            var found: [UInt64] = []
            while let parts = try pair.server.readOutbound(as: TunnelMessage.self) {
                var message = parts.joined()
                while let frame = try MuxFrameCodec.decode(from: &message) {
                    if case .pong(let opaque) = frame { found.append(opaque) }
                }
            }
            return found
        }
        #expect(try pongs().isEmpty)
        pair.server.isWritable = true
        pair.server.pipeline.fireChannelWritabilityChanged()
        pair.loop.run()
        #expect(try pongs() == [1000])
        #expect(!pair.serverMux.isClosed)
    }

    @Test func keepalivePingsAndASilentPeerEndsTheSession() throws {
        var config = MuxConfiguration()
        config.keepaliveInterval = .seconds(2)
        config.keepaliveTimeout = .seconds(1)
        var pair = try MuxPair(configuration: config)
        // One interval: a PING goes out, and the peer answers it within the timeout.
        pair.loop.advanceTime(by: .seconds(2))
        try pair.pump()
        #expect(pair.clientMux.lastRoundTrip != nil)
        pair.loop.advanceTime(by: .milliseconds(1500))   // past the first PING's timeout: it was answered
        #expect(!pair.clientMux.isClosed)
        // The peer goes silent (nothing is pumped back): dead one timeout after the next PING.
        pair.loop.advanceTime(by: .milliseconds(500))   // t = 4 s, the next PING
        #expect(!pair.clientMux.isClosed)
        pair.loop.advanceTime(by: .milliseconds(999))
        #expect(!pair.clientMux.isClosed)
        pair.loop.advanceTime(by: .milliseconds(1))
        #expect(pair.clientMux.isClosed)
        #expect(pair.clientDelegate.closed)
    }

    /// A timeout longer than the interval: later PINGs must not postpone the verdict on an earlier one.
    @Test func aKeepaliveTimeoutLongerThanTheIntervalStillEndsASilentSession() throws {
        var config = MuxConfiguration()
        config.keepaliveInterval = .seconds(2)
        config.keepaliveTimeout = .seconds(3)
        var pair = try MuxPair(configuration: config)
        pair.loop.advanceTime(by: .seconds(2))
        try pair.pump()   // the PING at 2 s is answered
        // Silent from here: PINGs at 4 s, 6 s, …; the one at 4 s has had no answer at 7 s.
        pair.loop.advanceTime(by: .milliseconds(4999))   // t = 6.999 s
        #expect(!pair.clientMux.isClosed)
        pair.loop.advanceTime(by: .milliseconds(1))
        #expect(pair.clientMux.isClosed)
    }

    @Test func anOpenWithoutAnAnswerTimesOut() throws {
        var config = MuxConfiguration()
        config.keepaliveInterval = .seconds(5)
        config.keepaliveTimeout = .seconds(60)
        config.openTimeout = .seconds(10)
        let pair = try MuxPair(configuration: config)
        pair.serverDelegate.decision = { _, _, _ in }   // the server never answers this one
        let (a, _) = try pair.endpoint()
        let promise = pair.loop.makePromise(of: Void.self)
        var failure: MuxStreamOpenError?
        promise.futureResult.assumeIsolated().whenFailure { failure = $0 as? MuxStreamOpenError }
        pair.clientMux.openStream(MuxOpenRequest(target: target), endpoint: ChannelStreamEndpoint(a), promise: promise)
        pair.loop.advanceTime(by: .seconds(5))
        #expect(failure == nil)
        pair.loop.advanceTime(by: .seconds(5))
        #expect(failure == .reset(.timedOut, reason: "no answer from the tunnel's peer within 10 s"))
    }
}
