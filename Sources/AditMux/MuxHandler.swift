import AditTransport
import Logging
import NIOCore

/// One tunnel session: sits on the carrier's channel (inbound and outbound items are whole messages; the
/// carrier is a WebSocket today, and this handler knows nothing of it) and multiplexes streams bound to
/// endpoints on the same event loop. Data moves by direct calls, with no hop through another loop, an actor or
/// an async sequence (docs/architecture.md).
///
/// The session's own life is `MuxSessionState`, each stream's is `StreamStateMachine`; this handler does the I/O
/// they ask for.
public final class MuxHandler: ChannelDuplexHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = Never
    public typealias OutboundIn = Never
    public typealias OutboundOut = TunnelMessage

    public let role: MuxRole
    public let configuration: MuxConfiguration
    /// Retained: the delegate must not retain this handler strongly in return, or forget it in `muxSessionDidClose`.
    public var delegate: (any MuxSessionDelegate)?
    public var logger: Logger

    private var context: ChannelHandlerContext?
    private var session = MuxSessionState()
    private var streams: [StreamID: MuxStream] = [:]
    private var listeners: [StreamID: Listener] = [:]
    private var scheduler = FairScheduler()
    private var nextLocalStreamID: StreamID
    private var highestRemoteStreamID = StreamID(0)

    private var waitingForHello: [StreamID] = []
    private var controlMessage: ByteBuffer?
    /// The PING to answer once the tunnel is writable again: while it is not, only the latest PING is answered
    /// (a peer that pings and never reads must not make us queue a PONG per PING).
    private var pendingPong: UInt64?
    private var flushScheduled = false
    private var dirtyEndpoints: [MuxStream] = []

    private var keepaliveTask: RepeatedTask?
    private var keepaliveCheck: Scheduled<Void>?
    private var lastPingSentAt: NIODeadline?
    private var lastHeardFrom: NIODeadline = .now()
    /// Totals for metrics; read them on the event loop.
    public private(set) var statistics = MuxStatistics()
    /// Bytes read from our endpoints and not yet framed, over every stream (`sessionReadHighWater`).
    private var outboundTotal = 0
    public var bufferedOutboundBytes: Int { outboundTotal }
    /// Streams that would read from their endpoint but for `sessionReadHighWater`, in the order they asked.
    private var waitingForReadBudget: [MuxStream] = []
    /// Bytes the peer sent that our endpoints have not taken yet, over every stream: past
    /// `maxBufferedBytes` new streams are refused, so many streams cannot pile up unbounded memory.
    public private(set) var bufferedBytes = 0
    /// Since when the session carries no stream and no listener (for `idleTimeout`).
    private var idleSince: NIODeadline?
    private var idleCheck: Scheduled<Void>?
    /// PING round trips: the latest for logs and metrics, the minimum for the receive windows.
    public private(set) var roundTrip = RoundTripEstimate()
    /// Round-trip time of the last PING, for logs and metrics.
    public var lastRoundTrip: TimeAmount? { roundTrip.latest }
    /// The receive windows of every stream together: they grow only while this stays within `windowBudget`.
    public private(set) var receiveWindowTotal = 0

    /// A listener set up by LISTEN: `local` when we asked the peer to listen, remote when the peer asked us.
    private struct Listener {
        var request: MuxListenRequest
        var local: Bool
        var promise: EventLoopPromise<MuxTarget?>?
        var established: Bool
    }

    public init(role: MuxRole, configuration: MuxConfiguration = .init(), logger: Logger,
                delegate: (any MuxSessionDelegate)? = nil) {
        self.role = role
        self.configuration = configuration
        self.logger = logger
        self.delegate = delegate
        self.nextLocalStreamID = role.firstStreamID
    }

    // MARK: Public API (call on the tunnel's event loop)

    /// HELLO exchanged, not draining, not closed.
    public var isReady: Bool { session.isReady }
    public var isClosed: Bool { session.isClosed }
    public var sessionState: MuxSessionState.State { session.state }
    public var streamCount: Int { streams.count }
    public var listenerCount: Int { listeners.count }
    /// What the peer accepts beyond the core protocol; empty until its HELLO.
    public var peerFeatures: MuxFeatures { session.peerHello?.features ?? [] }
    /// The tunnel's event loop, where every call into this handler belongs; nil before it joins a pipeline.
    public var eventLoop: (any EventLoop)? { context?.eventLoop }

    /// Closes the tunnel now, resetting every stream (the end of a drain that ran out of time).
    public func closeTunnel() {
        guard let context, !session.isClosed else { return }
        flushOutbound()
        teardown(error: nil)
        context.close(promise: nil)
    }

    /// Opens a stream for `request`, carried by `endpoint` (on this handler's event loop). Reading from the
    /// endpoint starts at once (early data). `promise` succeeds on OPEN_OK and fails with a `MuxStreamOpenError`
    /// (the peer's RESET, the session's end); on failure the endpoint is unbound but not closed, so the opener
    /// can answer in its own protocol. Returns the stream's ID, or nil when it could not even be sent.
    @discardableResult
    public func openStream(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint,
                           promise: EventLoopPromise<Void>?) -> StreamID? {
        guard let context else {
            promise?.fail(MuxStreamOpenError.session(.sessionClosed, unprocessed: true))
            return nil
        }
        precondition(endpoint.eventLoop === context.eventLoop, "stream endpoints must live on the tunnel's event loop")
        if let error = session.mayOpen() {
            promise?.fail(MuxStreamOpenError.session(error, unprocessed: true))
            return nil
        }
        if request.kind == .datagram, session.peerHello != nil, !peerFeatures.contains(.datagrams) {
            promise?.fail(MuxStreamOpenError.unsupported("UDP (datagram streams)"))
            return nil
        }
        if let listener = request.listener {
            guard let entry = listeners[listener], !entry.local, entry.established else {
                promise?.fail(MuxStreamOpenError.reset(.closed, reason: "listener \(listener) is closed"))
                return nil
            }
        }
        guard streams.count < configuration.maxConcurrentStreams else {
            promise?.fail(MuxStreamOpenError.session(.tooManyStreams(configuration.maxConcurrentStreams), unprocessed: true))
            return nil
        }
        guard let id = takeLocalStreamID() else {
            promise?.fail(MuxStreamOpenError.session(.streamIDsExhausted, unprocessed: true))
            return nil
        }
        let stream = MuxStream(
            id: id,
            state: .opening(peerInitialWindow: session.peerHello?.initialWindow ?? 0,
                            localInitialWindow: configuration.initialWindow, kind: request.kind),
            request: request, endpoint: endpoint)
        stream.openPromise = promise
        streams[id] = stream
        receiveWindowTotal += stream.state.receiveWindow.size
        idleSince = nil
        statistics.streamsOpened += 1
        logger.debug("opening stream", metadata: ["stream": "\(id)", "target": "\(request)"])
        if session.peerHello != nil {
            enqueueControl(.open(id, request))
            stream.openedAt = context.eventLoop.now
            scheduleFlush()
        } else {
            waitingForHello.append(id)
        }
        endpoint.bind(MuxStreamEvents(mux: self, stream: stream))
        requestReadIfPossible(stream)
        return id
    }

    /// Binds a stream the peer opened to the endpoint connected to its target, and answers OPEN_OK.
    public func accept(_ id: StreamID, endpoint: any MuxStreamEndpoint) {
        guard let context, let stream = streams[id], stream.endpoint == nil, stream.state.phase == .accepting else {
            // The peer reset the stream, or the session ended, while we were connecting.
            endpoint.close(abort: false)
            return
        }
        precondition(endpoint.eventLoop === context.eventLoop, "stream endpoints must live on the tunnel's event loop")
        stream.endpoint = endpoint
        stream.state.accepted()
        stream.established = true
        enqueueControl(.openOK(id, bound: nil))
        endpoint.bind(MuxStreamEvents(mux: self, stream: stream))
        guard streams[id] === stream else { return }  // closed while binding
        for buffer in stream.backlog { writeToEndpoint(stream, buffer) }
        stream.backlog = []
        flushEndpoint(stream)
        deliverFinIfDue(stream)
        requestReadIfPossible(stream)
        scheduleFlush()
    }

    /// Refuses a stream or a listener the peer opened.
    public func reject(_ id: StreamID, code: ResetCode, reason: String) {
        if let listener = listeners[id], !listener.local, !listener.established {
            listeners[id] = nil
            enqueueControl(.reset(id, code, reason: reason))
            scheduleFlush()
            return
        }
        guard let stream = streams[id], stream.state.phase == .accepting else { return }
        resetStream(stream, code: code, reason: reason)
        scheduleFlush()
    }

    /// Asks the peer to listen on our behalf (reverse forwarding). `promise` succeeds with the address the peer
    /// bound (when it says) and fails with a `MuxStreamOpenError`. Streams for the connections it accepts arrive
    /// through the delegate with `request.listener` set to the returned ID.
    @discardableResult
    public func listen(_ request: MuxListenRequest, promise: EventLoopPromise<MuxTarget?>?) -> StreamID? {
        guard context != nil else {
            promise?.fail(MuxStreamOpenError.session(.sessionClosed, unprocessed: true))
            return nil
        }
        if let error = session.mayOpen() {
            promise?.fail(MuxStreamOpenError.session(error, unprocessed: true))
            return nil
        }
        if session.peerHello != nil {
            guard peerFeatures.contains(.reverse) else {
                promise?.fail(MuxStreamOpenError.unsupported("reverse forwarding (-R)"))
                return nil
            }
            if request.kind == .datagram && !peerFeatures.contains(.datagrams) {
                promise?.fail(MuxStreamOpenError.unsupported("UDP (datagram streams)"))
                return nil
            }
        }
        guard let id = takeLocalStreamID() else {
            promise?.fail(MuxStreamOpenError.session(.streamIDsExhausted, unprocessed: true))
            return nil
        }
        listeners[id] = Listener(request: request, local: true, promise: promise, established: false)
        idleSince = nil
        if session.peerHello != nil {
            enqueueControl(.listen(id, request))
            scheduleFlush()
        } else {
            waitingForHello.append(id)
        }
        return id
    }

    /// Confirms a listener the peer asked for, naming the address actually bound.
    public func acceptListen(_ id: StreamID, bound: MuxTarget) {
        guard var listener = listeners[id], !listener.local, !listener.established else { return }
        listener.established = true
        listeners[id] = listener
        enqueueControl(.openOK(id, bound: bound))
        scheduleFlush()
    }

    /// Ends a listener (ours or the peer's): the peer learns it by RESET. Streams it already opened go on.
    public func closeListener(_ id: StreamID, code: ResetCode = .closed, reason: String = "") {
        guard let listener = listeners.removeValue(forKey: id) else { return }
        defer { noteIdleness() }
        enqueueControl(.reset(id, code, reason: reason))
        scheduleFlush()
        listener.promise?.fail(MuxStreamOpenError.reset(code, reason: reason))
        if listener.established {
            delegate?.muxSession(self, listenerDidClose: id, code: code, reason: reason)
        }
    }

    /// Starts a graceful drain: GOAWAY to the peer, no new streams either way; the tunnel closes when the last
    /// stream ends. Listeners close at once.
    public func beginDrain(reason: String) {
        guard session.beginDrain() else { return }
        enqueueControl(.goAway(lastStreamID: highestRemoteStreamID, code: .resourceLimit, reason: reason))
        closeAllListeners(reason: reason)
        endDatagramStreams()
        scheduleFlush()
        closeIfDrained()
    }

    /// A UDP flow never finishes on its own, so it would hold a draining session until its idle timeout: flows
    /// end with the drain instead (their next datagram opens a flow on the next session).
    private func endDatagramStreams() {
        for stream in Array(streams.values) where stream.state.kind == .datagram && !stream.state.isClosed {
            resetStream(stream, code: .closed, reason: "the tunnel is draining")
        }
    }

    /// Sends a PING now; the round trip is logged at debug level when the PONG arrives.
    public func ping() {
        guard session.peerHello != nil, !session.isClosed, context != nil else { return }
        enqueueControl(.ping(UInt64(NIODeadline.now().uptimeNanoseconds)))
        scheduleFlush()
    }

    /// With `idleTimeout`, a session that carries nothing (no stream, no listener) for that long drains.
    private func noteIdleness() {
        guard let timeout = configuration.idleTimeout, let context, streams.isEmpty, listeners.isEmpty,
            idleSince == nil, session.isReady
        else { return }
        let since = context.eventLoop.now
        idleSince = since
        idleCheck?.cancel()
        idleCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: since + timeout) { [self] in
            guard self.idleSince == since else { return }
            self.logger.info("tunnel idle for \(timeout.nanoseconds / 1_000_000_000) s; closing it")
            self.beginDrain(reason: "idle for \(timeout.nanoseconds / 1_000_000_000) s")
        }
    }

    private func takeLocalStreamID() -> StreamID? {
        let id = nextLocalStreamID
        guard id.rawValue < StreamID.maxRawValue - 2 else { return nil }
        nextLocalStreamID = StreamID(id.rawValue + 2)
        return id
    }

    // MARK: ChannelHandler

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { start(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private var started = false
    private func start(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        lastHeardFrom = context.eventLoop.now
        enqueueControl(.hello(MuxHello(initialWindow: configuration.initialWindow,
                                       maxMessageSize: configuration.maxReceiveMessageSize,
                                       features: configuration.features)))
        flushOutbound()
        let interval = configuration.keepaliveInterval
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        keepaliveTask = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.keepaliveTick()
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        teardown(error: nil)
        self.context = nil
    }

    public func channelInactive(context: ChannelHandlerContext) {
        teardown(error: MuxSessionError.tunnelClosed)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("tunnel error", metadata: ["error": "\(error)"])
        teardown(error: error)
        context.close(promise: nil)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            if let opaque = pendingPong {
                pendingPong = nil
                enqueueControl(.pong(opaque))
            }
            flushOutbound()
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var message = unwrapInboundIn(data)
        lastHeardFrom = context.eventLoop.now
        do {
            while !session.isClosed, let frame = try MuxFrameCodec.decode(from: &message) {
                try handle(frame)
            }
        } catch let error as MuxProtocolError {
            failSession(error)
        } catch {
            failSession(MuxProtocolError(.streamState, "\(error)"))
        }
    }

    public func channelReadComplete(context: ChannelHandlerContext) {
        for stream in dirtyEndpoints { flushEndpoint(stream) }
        dirtyEndpoints.removeAll(keepingCapacity: true)
        flushOutbound()
        context.fireChannelReadComplete()
    }

    // MARK: Inbound frames

    private func handle(_ frame: MuxFrame) throws {
        if case .awaitingHello = session.state {
            guard case .hello(let hello) = frame else {
                throw MuxProtocolError(.helloMissing, "the first frame of the session was not HELLO")
            }
            try receivedHello(hello)
            return
        }
        switch frame {
        case .data(let id, let payload, let fin):
            statistics.bytesReceived += payload.readableBytes
            guard let stream = try existingStream(id) else { return }
            stream.bytesFromPeer += payload.readableBytes
            receivedData(stream, payload, fin: fin)
        case .open(let id, let request):
            try receivedOpen(id, request: request)
        case .openOK(let id, let bound):
            if listeners[id] != nil {
                receivedListenOK(id, bound: bound)
                return
            }
            guard let stream = try existingStream(id) else { return }
            switch stream.state.receivedOpenOK() {
            case .reset(let code, let reason):
                resetStream(stream, code: code, reason: reason)
            case .opened:
                stream.established = true
                logger.debug("stream open", metadata: ["stream": "\(id)", "target": "\(stream.request)"])
                let promise = stream.openPromise
                stream.openPromise = nil
                promise?.succeed(())
            default:
                break
            }
        case .reset(let id, let code, let reason):
            if let listener = listeners.removeValue(forKey: id) {
                receivedListenerReset(id, listener, code: code, reason: reason)
                return
            }
            guard let stream = try existingStream(id) else { return }
            receivedReset(stream, code: code, reason: reason)
        case .windowUpdate(let id, let increment):
            if listeners[id] != nil { return }
            guard let stream = try existingStream(id) else { return }
            switch stream.state.receivedWindowUpdate(increment) {
            case .reset(let code, let reason):
                resetStream(stream, code: code, reason: reason)
            case .resumeSending:
                if stream.hasSendableWork { scheduler.markReady(stream.id) }
                requestReadIfPossible(stream)
            default:
                if stream.hasSendableWork { scheduler.markReady(stream.id) }
                requestReadIfPossible(stream)
            }
        case .ping(let opaque):
            if context?.channel.isWritable ?? false {
                enqueueControl(.pong(opaque))
            } else {
                pendingPong = opaque
            }
        case .pong(let opaque):
            let now = NIODeadline.now().uptimeNanoseconds
            if opaque <= now {
                let rtt = TimeAmount.nanoseconds(Int64(now - opaque))
                roundTrip.add(rtt)
                logger.debug("tunnel round trip", metadata: ["rtt_ms": "\(Double(rtt.nanoseconds) / 1e6)"])
                // The first samples, taken back to back while the session is new and quiet, find the path's
                // minimum round trip that the receive windows scale to.
                if roundTrip.samples < Self.roundTripProbes { ping() }
            }
        case .goAway(let last, let code, let reason):
            receivedGoAway(lastStreamID: last, code: code, reason: reason)
        case .listen(let id, let request):
            try receivedListen(id, request: request)
        case .hello:
            throw MuxProtocolError(.helloMissing, "a second HELLO")
        case .unknown:
            break
        }
    }

    private func receivedHello(_ hello: MuxHello) throws {
        let outcome = try session.receivedHello(hello)
        logger.debug("tunnel session ready", metadata: [
            "peer_window": "\(hello.initialWindow)", "peer_max_message": "\(hello.maxMessageSize)",
            "peer_features": "\(hello.features.rawValue)",
        ])
        let waiting = waitingForHello
        waitingForHello = []
        for id in waiting {
            if let stream = streams[id], !stream.state.isClosed {
                if outcome == .draining {
                    failOpen(stream, .session(.draining, unprocessed: true))
                    continue
                }
                if stream.request.kind == .datagram && !hello.features.contains(.datagrams) {
                    failOpen(stream, .unsupported("UDP (datagram streams)"))
                    continue
                }
                stream.state = .opening(peerInitialWindow: hello.initialWindow,
                                        localInitialWindow: configuration.initialWindow, kind: stream.request.kind)
                enqueueControl(.open(id, stream.request))
                stream.openedAt = context?.eventLoop.now ?? .now()
                requestReadIfPossible(stream)
            } else if let listener = listeners[id] {
                if outcome == .draining || !hello.features.contains(.reverse)
                    || (listener.request.kind == .datagram && !hello.features.contains(.datagrams)) {
                    listeners[id] = nil
                    listener.promise?.fail(outcome == .draining
                        ? MuxStreamOpenError.session(.draining, unprocessed: true)
                        : MuxStreamOpenError.unsupported(listener.request.kind == .datagram
                            ? "UDP reverse forwarding (-R …/udp)" : "reverse forwarding (-R)"))
                    continue
                }
                enqueueControl(.listen(id, listener.request))
            }
        }
        scheduleFlush()
        if outcome == .ready {
            ping()
            delegate?.muxSessionDidBecomeReady(self)
            noteIdleness()
        }
    }

    /// Looks up a stream named by a frame. IDs never opened are a protocol error; IDs already gone are ignored.
    private func existingStream(_ id: StreamID) throws -> MuxStream? {
        if let stream = streams[id] { return stream }
        let everOpened = id.opener == role ? id < nextLocalStreamID : id <= highestRemoteStreamID
        guard everOpened else {
            throw MuxProtocolError(.badStreamID, "frame for stream \(id), which was never opened")
        }
        return nil
    }

    private func claimRemoteStreamID(_ id: StreamID, what: String) throws {
        guard id.opener != role else {
            throw MuxProtocolError(.badStreamID, "peer sent \(what) for stream \(id), whose parity belongs to us")
        }
        guard id > highestRemoteStreamID else {
            throw MuxProtocolError(.badStreamID, "peer reused stream \(id) in \(what) (highest so far \(highestRemoteStreamID))")
        }
        highestRemoteStreamID = id
    }

    private func receivedData(_ stream: MuxStream, _ payload: ByteBuffer, fin: Bool) {
        switch stream.state.receivedData(length: payload.readableBytes, fin: fin) {
        case .deliver(let fin):
            bufferedBytes += payload.readableBytes
            if stream.endpoint == nil {
                stream.backlog.append(payload)
                return
            }
            if payload.readableBytes > 0 || stream.state.kind == .datagram {
                writeToEndpoint(stream, payload)
                if !stream.needsFlush {
                    stream.needsFlush = true
                    dirtyEndpoints.append(stream)
                }
            }
            if fin { deliverFinIfDue(stream) }
        case .reset(let code, let reason):
            resetStream(stream, code: code, reason: reason)
        default:
            break
        }
    }

    private func receivedOpen(_ id: StreamID, request: MuxOpenRequest) throws {
        try claimRemoteStreamID(id, what: "OPEN")
        statistics.streamsAccepted += 1
        let stream = MuxStream(
            id: id,
            state: .accepting(peerInitialWindow: session.peerHello!.initialWindow,
                              localInitialWindow: configuration.initialWindow, kind: request.kind),
            request: request, endpoint: nil)
        streams[id] = stream
        receiveWindowTotal += stream.state.receiveWindow.size
        idleSince = nil
        if !session.acceptsStreams {
            resetStream(stream, code: .resourceLimit, reason: "the \(role == .server ? "server" : "client") is shutting down")
        } else if streams.count > configuration.maxConcurrentStreams {
            resetStream(stream, code: .resourceLimit,
                        reason: "more than \(configuration.maxConcurrentStreams) streams open on this tunnel")
        } else if bufferedBytes > configuration.maxBufferedBytes {
            resetStream(stream, code: .resourceLimit,
                        reason: "the tunnel holds \(bufferedBytes >> 20) MiB its targets have not read yet, its limit")
        } else if request.kind == .datagram && !configuration.features.contains(.datagrams) {
            resetStream(stream, code: .notAllowed, reason: "this side does not accept datagram streams")
        } else if let listener = request.listener {
            guard listener.opener == role else {
                throw MuxProtocolError(.badStreamID, "reverse OPEN names listener \(listener), which the peer opened")
            }
            guard let entry = listeners[listener], entry.local, entry.established, entry.request.kind == request.kind else {
                // We closed that listener while the connection was on its way.
                resetStream(stream, code: .closed, reason: "listener \(listener) is closed")
                return
            }
            if let delegate { delegate.muxSession(self, didReceiveOpen: id, request: request) }
            else { resetStream(stream, code: .notAllowed, reason: "this side does not accept streams") }
        } else if let delegate {
            delegate.muxSession(self, didReceiveOpen: id, request: request)
        } else {
            resetStream(stream, code: .notAllowed, reason: "this side does not accept streams")
        }
    }

    private func receivedListen(_ id: StreamID, request: MuxListenRequest) throws {
        try claimRemoteStreamID(id, what: "LISTEN")
        let refusal: String?
        if !session.acceptsStreams {
            refusal = "the \(role == .server ? "server" : "client") is shutting down"
        } else if !configuration.features.contains(.reverse) {
            refusal = "this side does not listen on the peer's behalf"
        } else if listeners.values.filter({ !$0.local }).count >= configuration.maxListeners {
            refusal = "more than \(configuration.maxListeners) listeners on this tunnel"
        } else {
            refusal = nil
        }
        if let refusal {
            enqueueControl(.reset(id, .resourceLimit, reason: refusal))
            return
        }
        listeners[id] = Listener(request: request, local: false, promise: nil, established: false)
        idleSince = nil
        if let delegate {
            delegate.muxSession(self, didReceiveListen: id, request: request)
        } else {
            reject(id, code: .notAllowed, reason: "this side does not listen on the peer's behalf")
        }
    }

    private func receivedListenOK(_ id: StreamID, bound: MuxTarget?) {
        guard var listener = listeners[id], listener.local, !listener.established else { return }
        listener.established = true
        let promise = listener.promise
        listener.promise = nil
        listeners[id] = listener
        promise?.succeed(bound)
    }

    private func receivedListenerReset(_ id: StreamID, _ listener: Listener, code: ResetCode, reason: String) {
        defer { noteIdleness() }
        if let promise = listener.promise {
            promise.fail(MuxStreamOpenError.reset(code, reason: reason))
        } else if listener.established {
            delegate?.muxSession(self, listenerDidClose: id, code: code, reason: reason)
        }
    }

    private func receivedReset(_ stream: MuxStream, code: ResetCode, reason: String) {
        let wasOpening = stream.state.receivedReset()
        statistics.resets[code, default: 0] += 1
        if wasOpening {
            logger.debug("stream refused by the peer", metadata: [
                "stream": "\(stream.id)", "target": "\(stream.request)", "code": "\(code)", "reason": "\(reason)",
            ])
            failOpen(stream, .reset(code, reason: reason))
        } else {
            if code != .closed {
                logger.info("stream to \(stream.target) reset by peer: \(code.summary)",
                            metadata: ["stream": "\(stream.id)", "reason": "\(reason)"])
            }
            removeStream(stream, endpoint: .abort, end: .resetByPeer(code, reason: reason))
        }
    }

    private func receivedGoAway(lastStreamID: StreamID, code: ResetCode, reason: String) {
        guard session.receivedGoAway() else { return }
        logger.info("peer is draining the tunnel", metadata: ["reason": "\(reason)"])
        // Our streams above the peer's last accepted ID were never seen: fail them so their users retry.
        if lastStreamID.opener == role || lastStreamID.isSession {
            for stream in Array(streams.values) where stream.id.opener == role && stream.id > lastStreamID
                && stream.state.phase == .awaitingOpenOK {
                stream.state.receivedReset()
                failOpen(stream, .session(.draining, unprocessed: true))
            }
        }
        closeAllListeners(reason: "the peer is shutting down")
        endDatagramStreams()
        delegate?.muxSessionDidReceiveGoAway(self, code: code, reason: reason)
        closeIfDrained()
    }

    private func closeAllListeners(reason: String) {
        for (id, listener) in listeners {
            listeners[id] = nil
            enqueueControl(.reset(id, .resourceLimit, reason: reason))
            if let promise = listener.promise {
                promise.fail(MuxStreamOpenError.session(.draining, unprocessed: true))
            } else if listener.established {
                delegate?.muxSession(self, listenerDidClose: id, code: .resourceLimit, reason: reason)
            }
        }
    }

    // MARK: Endpoint events (through MuxStreamEvents)

    func endpointRead(_ stream: MuxStream, _ buffer: ByteBuffer) {
        guard streams[stream.id] === stream, stream.state.wantsEndpointInput else { return }
        stream.readAnything = true
        if stream.state.kind == .datagram {
            let limit = min(configuration.sendMessageSize, Int(session.peerHello?.maxMessageSize ?? 64 << 10))
            guard buffer.readableBytes + MuxFrame.headerSize <= limit,
                stream.outboundBytes + buffer.readableBytes <= configuration.datagramQueueLimit
            else {
                statistics.datagramsDropped += 1
                return
            }
        }
        stream.outboundBytes += buffer.readableBytes
        outboundTotal += buffer.readableBytes
        stream.outbound.append(buffer)
        if stream.hasSendableWork { scheduler.markReady(stream.id) }
        if stream.state.kind == .datagram { scheduleFlush() }
    }

    func endpointReadComplete(_ stream: MuxStream) {
        stream.readInFlight = false
        guard streams[stream.id] === stream else { return }
        requestReadIfPossible(stream)
        flushOutbound()
    }

    func endpointInputClosed(_ stream: MuxStream) {
        guard streams[stream.id] === stream else { return }
        if stream.state.endpointInputEnded() == .queueFin {
            scheduler.markReady(stream.id)
            flushOutbound()
        }
    }

    func endpointClosed(_ stream: MuxStream) {
        guard streams[stream.id] === stream else { return }
        stream.endpoint = nil
        let wasOpening = stream.state.phase == .awaitingOpenOK
        switch stream.state.endpointClosed() {
        case .queueFin:
            scheduler.markReady(stream.id)
            finishIfDone(stream)
        case .reset(let code, let reason):
            enqueueControl(.reset(stream.id, code, reason: reason))
            statistics.resets[code, default: 0] += 1
            if wasOpening {
                failOpen(stream, .endpointClosed)
            } else {
                removeStream(stream, endpoint: .none, end: .resetByUs(code, reason: reason))
            }
        default:
            finishIfDone(stream)
        }
        scheduleFlush()
    }

    // MARK: Stream plumbing

    private func requestReadIfPossible(_ stream: MuxStream) {
        guard let endpoint = stream.endpoint, !stream.readInFlight, stream.state.wantsEndpointInput,
            stream.outboundBytes < configuration.streamReadHighWater,
            stream.state.sendWindow.available > stream.outboundBytes, session.peerHello != nil
        else { return }
        guard outboundTotal < configuration.sessionReadHighWater else {
            if !stream.waitingForSessionReadBudget {
                stream.waitingForSessionReadBudget = true
                waitingForReadBudget.append(stream)
            }
            return
        }
        stream.readInFlight = true
        endpoint.read()
    }

    private func writeToEndpoint(_ stream: MuxStream, _ buffer: ByteBuffer) {
        guard let endpoint = stream.endpoint, let context else { return }
        let count = buffer.readableBytes
        stream.writesInFlight += count
        let promise = context.eventLoop.makePromise(of: Void.self)
        endpoint.write(buffer, promise: promise)
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            self.endpointWriteCompleted(stream, count: count, result: result)
        }
    }

    private func endpointWriteCompleted(_ stream: MuxStream, count: Int, result: Result<Void, any Error>) {
        stream.writesInFlight -= count
        guard streams[stream.id] === stream, !stream.state.isClosed else { return }
        bufferedBytes -= count
        switch result {
        case .success:
            if let increment = consumed(stream, count) {
                enqueueControl(.windowUpdate(stream.id, increment: increment))
                scheduleFlush()
            }
            deliverFinIfDue(stream)
        case .failure(let error):
            if stream.state.kind == .datagram {
                // A datagram that could not be sent (ICMP unreachable, no buffer) is lost, as UDP allows; the
                // flow goes on and its credit comes back.
                statistics.datagramsDropped += 1
                if let increment = consumed(stream, count) {
                    enqueueControl(.windowUpdate(stream.id, increment: increment))
                    scheduleFlush()
                }
                return
            }
            logger.debug("write to stream endpoint failed", metadata: ["stream": "\(stream.id)", "error": "\(error)"])
            resetStream(stream, code: .closed, reason: "")
            scheduleFlush()
        }
    }

    /// Credit for bytes the endpoint took, from a window that adapts to the path once its round trip is known
    /// (`ReceiveWindow`), within `maxWindow` per stream and `windowBudget` for the session.
    private func consumed(_ stream: MuxStream, _ count: Int) -> UInt32? {
        var tuning: ReceiveWindow.Tuning?
        if let minimum = roundTrip.minimum, configuration.maxWindow > Int(configuration.initialWindow) {
            tuning = .init(minimumRoundTrip: minimum, maximum: configuration.maxWindow,
                           allowance: max(0, configuration.windowBudget - receiveWindowTotal))
        }
        let before = stream.state.receiveWindow.size
        let increment = stream.state.consumed(count, at: context?.eventLoop.now ?? .now(), tuning: tuning)
        receiveWindowTotal += stream.state.receiveWindow.size - before
        return increment
    }

    private func flushEndpoint(_ stream: MuxStream) {
        stream.needsFlush = false
        stream.endpoint?.flush()
    }

    /// Passes the peer's FIN on as an end-of-file once every byte before it was written.
    private func deliverFinIfDue(_ stream: MuxStream) {
        guard stream.state.finAwaitingDelivery, stream.writesInFlight == 0, let endpoint = stream.endpoint else { return }
        stream.state.deliveredFin()
        endpoint.flush()
        endpoint.shutdownOutput()
        finishIfDone(stream)
    }

    private func finishIfDone(_ stream: MuxStream) {
        guard stream.state.finishIfDone() else { return }
        removeStream(stream, endpoint: .close, end: .finished)
    }

    /// Fails the open of one of our streams: the endpoint goes back to the opener (who answers in its own
    /// protocol) when it asked with a promise, else it is closed.
    private func failOpen(_ stream: MuxStream, _ error: MuxStreamOpenError) {
        if let promise = stream.openPromise {
            stream.openPromise = nil
            let endpoint = stream.endpoint
            stream.endpoint = nil
            endpoint?.unbind()
            removeStream(stream, endpoint: .none)
            promise.fail(error)
        } else {
            logger.notice("connection to \(stream.request) failed: \(error)", metadata: ["stream": "\(stream.id)"])
            removeStream(stream, endpoint: .abort)
        }
    }

    private func resetStream(_ stream: MuxStream, code: ResetCode, reason: String) {
        if streams[stream.id] === stream {
            enqueueControl(.reset(stream.id, code, reason: reason))
        }
        let wasOpening = stream.state.phase == .awaitingOpenOK
        stream.state.sentReset()
        statistics.resets[code, default: 0] += 1
        if code != .closed {
            logger.debug("stream reset", metadata: ["stream": "\(stream.id)", "code": "\(code)", "reason": "\(reason)"])
        }
        if wasOpening && stream.openPromise != nil {
            failOpen(stream, .reset(code, reason: reason))
        } else {
            removeStream(stream, endpoint: .abort, end: .resetByUs(code, reason: reason))
        }
    }

    private enum EndpointDisposition { case none, close, abort }

    private func removeStream(_ stream: MuxStream, endpoint disposition: EndpointDisposition,
                              end: MuxStreamRecord.End = .resetByUs(.internalError, reason: "not established")) {
        guard streams[stream.id] === stream else { return }
        streams[stream.id] = nil
        if stream.established { delegate?.muxSession(self, streamDidEnd: stream.record(end)) }
        // What it held unread is no longer the session's (the writes still in flight complete on a gone stream).
        bufferedBytes -= stream.state.receiveWindow.unconsumed
        receiveWindowTotal -= stream.state.receiveWindow.size
        noteIdleness()
        scheduler.remove(stream.id)
        stream.outbound.removeAll()
        outboundTotal -= stream.outboundBytes
        stream.outboundBytes = 0
        stream.backlog = []
        if let promise = stream.openPromise {
            // Opened, then ended before OPEN_OK by a path that did not fail it: never leave an opener hanging.
            stream.openPromise = nil
            promise.fail(MuxStreamOpenError.session(.sessionClosed, unprocessed: false))
        }
        if let endpoint = stream.endpoint {
            stream.endpoint = nil
            endpoint.unbind()
            switch disposition {
            case .none: break
            case .close: endpoint.close(abort: false)
            case .abort: endpoint.close(abort: stream.state.kind == .stream)
            }
        }
        closeIfDrained()
    }

    // MARK: Outbound

    private func enqueueControl(_ frame: MuxFrame) {
        guard let context, !session.isClosed else { return }
        let limit = Int(session.peerHello?.maxMessageSize ?? 64 << 10)
        if let existing = controlMessage, existing.readableBytes + 512 > limit {
            context.write(wrapOutboundOut(TunnelMessage(existing)), promise: nil)
            controlMessage = nil
        }
        if controlMessage == nil {
            controlMessage = context.channel.allocator.buffer(capacity: 256)
        }
        MuxFrameCodec.encode(frame, into: &controlMessage!)
    }

    private func scheduleFlush() {
        guard !flushScheduled, let context else { return }
        flushScheduled = true
        context.eventLoop.assumeIsolated().execute { [self] in
            self.flushScheduled = false
            self.flushOutbound()
        }
    }

    /// One DATA frame chosen by the scheduler, before its header is written.
    private struct PlannedFrame {
        var stream: StreamID
        var length: Int
        var fin: Bool
        /// This frame's payload slices within the message's shared `payloads` list (no array per frame).
        var payloads: Range<Int>
    }

    /// Writes pending control frames, then serves the streams round-robin while the tunnel is writable. DATA
    /// payloads go down as slices of what was read from the endpoints; only the 9-byte headers are new.
    private func flushOutbound() {
        guard let context, !session.isClosed else { return }
        var wrote = false
        if let control = controlMessage {
            controlMessage = nil
            if !context.channel.isWritable, peerStoppedReading(context) { return }
            context.write(wrapOutboundOut(TunnelMessage(control)), promise: nil)
            wrote = true
        }
        if let peerHello = session.peerHello, !scheduler.isEmpty, context.channel.isWritable {
            let messageLimit = min(configuration.sendMessageSize, Int(peerHello.maxMessageSize))
            var planned: [PlannedFrame] = []
            var payloads: [ByteBuffer] = []
            var size = 0
            // Streams whose FIN is in this batch end only after it is written: ending the last stream of a
            // draining tunnel closes the tunnel, and that must not happen with the frame still in `planned`.
            var finished: [MuxStream] = []
            defer { for stream in finished { finishIfDone(stream) } }
            func writePlanned() {
                writeDataMessage(planned, payloads: payloads, context: context)
                planned.removeAll(keepingCapacity: true)
                payloads.removeAll(keepingCapacity: true)
                size = 0
                wrote = true
            }
            while let id = scheduler.next() {
                guard let stream = streams[id], stream.hasSendableWork else { continue }
                var space = messageLimit - size - MuxFrame.headerSize
                let count: Int
                if stream.state.kind == .datagram {
                    // One datagram per frame, never split: if it does not fit this message, it starts the next.
                    count = stream.outbound[stream.outbound.startIndex].readableBytes
                    if count > space && !planned.isEmpty {
                        writePlanned()
                        space = messageLimit - MuxFrame.headerSize
                    }
                } else {
                    // The quantum only matters when another stream is waiting; alone, a stream fills the message.
                    let quantum = scheduler.isEmpty ? space : configuration.quantum
                    count = min(stream.outboundBytes, stream.state.sendWindow.available, quantum, space)
                }
                let fin = stream.state.finQueued && count == stream.outboundBytes
                if count > 0 || fin || stream.state.kind == .datagram {
                    let first = payloads.count
                    stream.takeOutbound(count, into: &payloads)
                    outboundTotal -= count
                    if stream.state.kind == .datagram && count == 0 {
                        // An empty datagram is a datagram too.
                        payloads.append(stream.outbound.removeFirst())
                    }
                    planned.append(PlannedFrame(stream: id, length: count, fin: fin, payloads: first..<payloads.count))
                    statistics.bytesSent += count
                    stream.bytesToPeer += count
                    size += MuxFrame.headerSize + count
                    stream.state.sentData(length: count, fin: fin)
                    if fin { finished.append(stream) }
                }
                if streams[id] === stream {
                    if stream.hasSendableWork { scheduler.markReady(id) }
                    requestReadIfPossible(stream)
                }
                if size + MuxFrame.headerSize + 512 >= messageLimit {
                    writePlanned()
                    if !context.channel.isWritable { break }
                }
            }
            if !planned.isEmpty { writePlanned() }
        }
        if wrote { context.flush() }
        resumeReadsWaitingForBudget()
    }

    /// Once the scheduler has framed half of the session's read-ahead, the streams it held back read again, in
    /// the order they were held back (each may be held back again, at the end of the queue).
    private func resumeReadsWaitingForBudget() {
        guard !waitingForReadBudget.isEmpty, outboundTotal < configuration.sessionReadHighWater / 2 else { return }
        let waiting = waitingForReadBudget
        waitingForReadBudget.removeAll(keepingCapacity: true)
        for stream in waiting {
            stream.waitingForSessionReadBudget = false
            if streams[stream.id] === stream { requestReadIfPossible(stream) }
        }
    }

    private func writeDataMessage(_ frames: [PlannedFrame], payloads: [ByteBuffer], context: ChannelHandlerContext) {
        // All headers go into one small buffer, written before any slice of it is taken (slicing first and
        // writing after would copy it on every write).
        var headers = context.channel.allocator.buffer(capacity: frames.count * MuxFrame.headerSize)
        for frame in frames {
            MuxFrameCodec.writeDataHeader(streamID: frame.stream, length: frame.length, fin: frame.fin, into: &headers)
        }
        var message = TunnelMessage()
        // The stream with most bytes here decides whether the transport learns "compressible" or not from it.
        var dominant = frames[0]
        for frame in frames where frame.length > dominant.length { dominant = frame }
        message.compressionKey = dominant.stream.rawValue
        for (index, frame) in frames.enumerated() {
            message.append(headers.getSlice(at: headers.readerIndex + index * MuxFrame.headerSize,
                                            length: MuxFrame.headerSize)!)
            for part in payloads[frame.payloads] { message.append(part) }
        }
        context.write(wrapOutboundOut(message), promise: nil)
    }

    /// Control frames answer the peer's own frames (RESET for a refused OPEN, credit, PONG), so a peer that keeps
    /// sending but never reads could make us queue them without end. Data stops at the socket's high-water mark;
    /// control bytes are allowed up to `maxUnreadBytes` beyond what the kernel took, then the session ends.
    private func peerStoppedReading(_ context: ChannelHandlerContext) -> Bool {
        guard let buffered = try? context.channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes),
            buffered > configuration.maxUnreadBytes
        else { return false }
        logger.warning("the tunnel peer stopped reading: \(buffered) bytes wait for it; closing the tunnel")
        teardown(error: MuxSessionError.peerNotReading)
        context.close(promise: nil)
        return true
    }

    // MARK: Session end

    /// PINGs sent back to back when the session starts, for its minimum round trip.
    static let roundTripProbes = 3

    private func keepaliveTick() {
        guard !session.isClosed, let context else { return }
        let now = context.eventLoop.now
        failUnansweredOpens(now: now)
        // Every interval, silent or not: keeps NAT and proxy state alive and measures the round trip. The peer
        // must be heard from (anything counts) within the timeout after the PING.
        ping()
        lastPingSentAt = now
        if keepaliveCheck == nil { scheduleKeepaliveCheck(forPingSentAt: now, context: context) }
    }

    /// One check at a time, for the oldest PING not yet followed by anything from the peer: with a timeout
    /// longer than the interval, rescheduling on every PING would postpone the verdict forever.
    private func scheduleKeepaliveCheck(forPingSentAt sentAt: NIODeadline, context: ChannelHandlerContext) {
        keepaliveCheck = context.eventLoop.assumeIsolated().scheduleTask(deadline: sentAt + configuration.keepaliveTimeout) { [self] in
            self.keepaliveCheck = nil
            guard !self.session.isClosed, let context = self.context else { return }
            if self.lastHeardFrom < sentAt {
                let silence = context.eventLoop.now - self.lastHeardFrom
                self.logger.warning("tunnel peer silent for \(Self.seconds(silence)), \(Self.seconds(self.configuration.keepaliveTimeout)) after a keepalive ping; closing the tunnel")
                self.teardown(error: MuxSessionError.keepaliveTimeout)
                context.close(promise: nil)
            } else if let latest = self.lastPingSentAt, latest > sentAt, self.lastHeardFrom < latest {
                self.scheduleKeepaliveCheck(forPingSentAt: latest, context: context)
            }
        }
    }

    /// Our opens that got no answer in time fail as "timed out" (the peer is alive, but this stream's answer is
    /// lost or stuck), so their users are not left hanging.
    private func failUnansweredOpens(now: NIODeadline) {
        for stream in Array(streams.values) where stream.state.phase == .awaitingOpenOK
            && now - stream.openedAt >= configuration.openTimeout {
            resetStream(stream, code: .timedOut,
                        reason: "no answer from the tunnel's peer within \(Self.seconds(configuration.openTimeout))")
        }
    }

    static func seconds(_ t: TimeAmount) -> String {
        let s = Double(t.nanoseconds) / 1e9
        return s < 10 ? "\((s * 10).rounded() / 10) s" : "\(Int(s)) s"
    }

    private func failSession(_ error: MuxProtocolError) {
        logger.error("\(error)")
        guard let context, !session.isClosed else { return }
        enqueueControl(.goAway(lastStreamID: highestRemoteStreamID, code: .protocolError, reason: error.detail))
        flushOutbound()
        teardown(error: error)
        // The carrier says "protocol error" in its own terms (WebSocket: 1002); one that cannot is simply closed.
        let channel = context.channel
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.whenFailure { _ in channel.close(promise: nil) }
        context.triggerUserOutboundEvent(TunnelCloseRequest(.protocolError, detail: error.detail), promise: promise)
    }

    private func closeIfDrained() {
        guard session.drainedWhenEmpty(), streams.isEmpty, let context else { return }
        flushOutbound()
        teardown(error: nil)
        context.close(promise: nil)
    }

    private func teardown(error: (any Error)?) {
        guard session.close() else { return }
        keepaliveTask?.cancel()
        keepaliveTask = nil
        keepaliveCheck?.cancel()
        keepaliveCheck = nil
        idleCheck?.cancel()
        idleCheck = nil
        let all = Array(streams.values)
        streams.removeAll()
        let allListeners = listeners
        listeners.removeAll()
        for (_, listener) in allListeners {
            listener.promise?.fail(MuxStreamOpenError.session(error == nil ? .sessionClosed : .tunnelClosed, unprocessed: false))
        }
        let sessionError = (error as? MuxSessionError) ?? .tunnelClosed
        for stream in all {
            if stream.established { delegate?.muxSession(self, streamDidEnd: stream.record(.tunnelClosed)) }
            let wasOpening = stream.state.receivedReset()
            let endpoint = stream.endpoint
            stream.endpoint = nil
            if let promise = stream.openPromise {
                // The opener answers in its own protocol; an open the peer never saw can go to another session.
                stream.openPromise = nil
                endpoint?.unbind()
                promise.fail(MuxStreamOpenError.session(sessionError, unprocessed: wasOpening && !stream.readAnything))
                continue
            }
            guard let endpoint else { continue }
            endpoint.unbind()
            // A stream whose peer had not finished was cut short: the application must see an error, not an end
            // of file that looks like success.
            let abort = stream.state.kind == .stream && stream.state.inbound == .open
            if stream.writesInFlight > 0 && stream.state.kind == .stream {
                // What the peer sent before the tunnel ended (often in the same read as the close) still reaches
                // the local socket, then it ends. A reader that never takes it gets ten seconds.
                endpoint.flush()
                let loop = endpoint.eventLoop
                let done = loop.makePromise(of: Void.self)
                endpoint.write(ByteBuffer(), promise: done)
                endpoint.flush()
                done.futureResult.assumeIsolated().whenComplete { _ in endpoint.close(abort: abort) }
                loop.assumeIsolated().scheduleTask(in: .seconds(10)) { endpoint.close(abort: abort) }
            } else {
                endpoint.close(abort: abort)
            }
        }
        let delegate = self.delegate
        self.delegate = nil
        delegate?.muxSessionDidClose(self, error: error)
    }
}
