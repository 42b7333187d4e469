import AditTransport
import Logging
import NIOCore

/// One tunnel session: sits on the WebSocket channel (inbound and outbound items are whole binary messages) and
/// multiplexes streams bound to local TCP channels on the same event loop. Data moves by direct calls, with no
/// hop through another loop, an actor or an async sequence (docs/architecture.md).
///
/// A stream's local channel is not a NIO child channel: the stream binds to the real TCP channel and a
/// `StreamBridgeHandler` in it reports reads, EOF and closure. That saves one pipeline and one copy per
/// direction compared with swift-nio-http2's child channels, at the price of requiring same-loop endpoints.
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
    private var streams: [StreamID: MuxStream] = [:]
    private var scheduler = FairScheduler()
    private var nextLocalStreamID: StreamID
    private var highestRemoteStreamID = StreamID(0)

    private var peerHello: MuxHello?
    private var waitingForHello: [StreamID] = []
    private var controlMessage: ByteBuffer?
    private var flushScheduled = false
    private var dirtyEndpoints: [MuxStream] = []

    private var keepaliveTask: RepeatedTask?
    private var lastHeardFrom: NIODeadline = .now()
    /// Totals for metrics; read them on the event loop.
    public private(set) var statistics = MuxStatistics()
    /// Round-trip time of the last PING, for logs and metrics.
    public private(set) var lastRoundTrip: TimeAmount?

    private var sentGoAway = false
    private var receivedGoAway = false
    private var closed = false

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
    public var isReady: Bool { peerHello != nil && !closed && !receivedGoAway && !sentGoAway }
    public var isClosed: Bool { closed }
    public var streamCount: Int { streams.count }
    /// The tunnel's event loop, where every call into this handler belongs; nil before it joins a pipeline.
    public var eventLoop: (any EventLoop)? { context?.eventLoop }

    /// Closes the tunnel now, resetting every stream (the end of a drain that ran out of time).
    public func closeTunnel() {
        guard let context, !closed else { return }
        flushOutbound()
        teardown(error: nil)
        context.close(promise: nil)
    }

    /// Opens a stream to `target` carried by `endpoint`, a channel on this handler's event loop. Reading from the
    /// endpoint starts at once (early data); if the peer refuses, the endpoint is closed.
    @discardableResult
    public func openStream(to target: MuxTarget, endpoint: any Channel) throws(MuxSessionError) -> StreamID {
        guard let context, !closed else { throw MuxSessionError.sessionClosed }
        precondition(endpoint.eventLoop === context.eventLoop, "stream endpoints must live on the tunnel's event loop")
        guard !sentGoAway, !receivedGoAway else { throw MuxSessionError.draining }
        guard streams.count < configuration.maxConcurrentStreams else {
            throw MuxSessionError.tooManyStreams(configuration.maxConcurrentStreams)
        }
        let id = nextLocalStreamID
        guard id.rawValue < StreamID.maxRawValue - 2 else { throw MuxSessionError.streamIDsExhausted }
        nextLocalStreamID = StreamID(id.rawValue + 2)

        let stream = MuxStream(
            id: id,
            state: .opening(peerInitialWindow: peerHello?.initialWindow ?? 0,
                            localInitialWindow: configuration.initialWindow),
            target: target, endpoint: endpoint)
        streams[id] = stream
        installBridge(on: endpoint, for: stream)
        if peerHello != nil {
            enqueueControl(.open(id, target))
            requestReadIfPossible(stream)
            scheduleFlush()
        } else {
            waitingForHello.append(id)
        }
        statistics.streamsOpened += 1
        logger.debug("opening stream", metadata: ["stream": "\(id)", "target": "\(target)"])
        return id
    }

    /// Binds a stream the peer opened to the channel connected to its target, and answers OPEN_OK.
    public func accept(_ id: StreamID, endpoint: any Channel) {
        guard let context, let stream = streams[id], stream.endpoint == nil, stream.state.phase == .accepting else {
            // The peer reset the stream, or the session ended, while we were connecting.
            endpoint.close(promise: nil)
            return
        }
        precondition(endpoint.eventLoop === context.eventLoop, "stream endpoints must live on the tunnel's event loop")
        stream.endpoint = endpoint
        stream.state.accepted()
        installBridge(on: endpoint, for: stream)
        enqueueControl(.openOK(id))
        for buffer in stream.backlog { writeToEndpoint(stream, buffer) }
        stream.backlog = []
        if stream.backlogFin { stream.inboundFinPending = true }
        flushEndpoint(stream)
        deliverFinIfDue(stream)
        requestReadIfPossible(stream)
        scheduleFlush()
    }

    /// Refuses a stream the peer opened.
    public func reject(_ id: StreamID, code: ResetCode, reason: String) {
        guard let stream = streams[id], stream.state.phase == .accepting else { return }
        resetStream(stream, code: code, reason: reason)
        scheduleFlush()
    }

    /// Starts a graceful drain: GOAWAY to the peer, no new streams either way; the tunnel closes when the last
    /// stream ends.
    public func beginDrain(reason: String) {
        guard !sentGoAway, !closed else { return }
        sentGoAway = true
        enqueueControl(.goAway(lastStreamID: highestRemoteStreamID, code: .resourceLimit, reason: reason))
        scheduleFlush()
        closeIfDrained()
    }

    /// Sends a PING now; the round trip is logged at debug level when the PONG arrives.
    public func ping() {
        guard peerHello != nil, !closed, context != nil else { return }
        enqueueControl(.ping(UInt64(NIODeadline.now().uptimeNanoseconds)))
        scheduleFlush()
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
                                       maxMessageSize: configuration.maxReceiveMessageSize)))
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
        teardown(error: closed ? nil : MuxSessionError.tunnelClosed)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        logger.debug("tunnel error", metadata: ["error": "\(error)"])
        teardown(error: error)
        context.close(promise: nil)
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { flushOutbound() }
        context.fireChannelWritabilityChanged()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var message = unwrapInboundIn(data)
        lastHeardFrom = context.eventLoop.now
        do {
            while let frame = try MuxFrameCodec.decode(from: &message) {
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
        if peerHello == nil {
            guard case .hello(let hello) = frame else {
                throw MuxProtocolError(.helloMissing, "the first frame of the session was not HELLO")
            }
            guard hello.version == MuxHello.currentVersion else {
                throw MuxProtocolError(.unsupportedVersion,
                                       "peer speaks tunnel protocol version \(hello.version), we speak \(MuxHello.currentVersion)")
            }
            try receivedHello(hello)
            return
        }
        switch frame {
        case .data(let id, let payload, let fin):
            statistics.bytesReceived += payload.readableBytes
            guard let stream = try existingStream(id) else { return }
            switch stream.state.receivedData(length: payload.readableBytes, fin: fin) {
            case .deliver(let fin):
                if stream.endpoint == nil {
                    if payload.readableBytes > 0 { stream.backlog.append(payload) }
                    if fin { stream.backlogFin = true }
                } else {
                    if payload.readableBytes > 0 {
                        writeToEndpoint(stream, payload)
                        if !stream.needsFlush {
                            stream.needsFlush = true
                            dirtyEndpoints.append(stream)
                        }
                    }
                    if fin {
                        stream.inboundFinPending = true
                        deliverFinIfDue(stream)
                    }
                }
            case .reset(let code, let reason):
                resetStream(stream, code: code, reason: reason)
            case .discard, .none, .resumeSending:
                break
            }
        case .open(let id, let target):
            try receivedOpen(id, target: target)
        case .openOK(let id):
            guard let stream = try existingStream(id) else { return }
            if case .reset(let code, let reason) = stream.state.receivedOpenOK() {
                resetStream(stream, code: code, reason: reason)
            } else {
                logger.debug("stream open", metadata: ["stream": "\(id)", "target": "\(stream.target)"])
            }
        case .reset(let id, let code, let reason):
            guard let stream = try existingStream(id) else { return }
            receivedReset(stream, code: code, reason: reason)
        case .windowUpdate(let id, let increment):
            guard let stream = try existingStream(id) else { return }
            switch stream.state.receivedWindowUpdate(increment) {
            case .reset(let code, let reason):
                resetStream(stream, code: code, reason: reason)
            case .resumeSending:
                if stream.hasSendableWork { scheduler.markReady(stream.id) }
                requestReadIfPossible(stream)
            default:
                requestReadIfPossible(stream)
            }
        case .ping(let opaque):
            enqueueControl(.pong(opaque))
        case .pong(let opaque):
            let now = NIODeadline.now().uptimeNanoseconds
            if opaque <= now {
                let rtt = TimeAmount.nanoseconds(Int64(now - opaque))
                lastRoundTrip = rtt
                logger.debug("tunnel round trip", metadata: ["rtt_ms": "\(Double(rtt.nanoseconds) / 1e6)"])
            }
        case .goAway(let last, let code, let reason):
            receivedGoAway(lastStreamID: last, code: code, reason: reason)
        case .hello:
            throw MuxProtocolError(.helloMissing, "a second HELLO")
        case .unknown:
            break
        }
    }

    private func receivedHello(_ hello: MuxHello) throws {
        guard hello.maxMessageSize >= 1024 else {
            throw MuxProtocolError(.badLength, "peer accepts messages of only \(hello.maxMessageSize) bytes")
        }
        peerHello = hello
        logger.debug("tunnel session ready", metadata: [
            "peer_window": "\(hello.initialWindow)", "peer_max_message": "\(hello.maxMessageSize)",
        ])
        for id in waitingForHello {
            guard let stream = streams[id], !stream.state.isClosed else { continue }
            stream.state = .opening(peerInitialWindow: hello.initialWindow,
                                    localInitialWindow: configuration.initialWindow)
            enqueueControl(.open(id, stream.target))
            requestReadIfPossible(stream)
        }
        waitingForHello = []
        delegate?.muxSessionDidBecomeReady(self)
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

    private func receivedOpen(_ id: StreamID, target: MuxTarget) throws {
        guard id.opener != role else {
            throw MuxProtocolError(.badStreamID, "peer opened stream \(id), whose parity belongs to us")
        }
        guard id > highestRemoteStreamID else {
            throw MuxProtocolError(.badStreamID, "peer reopened stream \(id) (highest so far \(highestRemoteStreamID))")
        }
        highestRemoteStreamID = id
        statistics.streamsAccepted += 1
        let stream = MuxStream(
            id: id,
            state: .accepting(peerInitialWindow: peerHello!.initialWindow, localInitialWindow: configuration.initialWindow),
            target: target, endpoint: nil)
        streams[id] = stream
        if sentGoAway {
            resetStream(stream, code: .resourceLimit, reason: "the server is shutting down")
        } else if streams.count > configuration.maxConcurrentStreams {
            resetStream(stream, code: .resourceLimit,
                        reason: "more than \(configuration.maxConcurrentStreams) streams open on this tunnel")
        } else if let delegate {
            delegate.muxSession(self, didReceiveOpenFor: id, target: target)
        } else {
            resetStream(stream, code: .notAllowed, reason: "this side does not accept streams")
        }
    }

    private func receivedReset(_ stream: MuxStream, code: ResetCode, reason: String) {
        let wasOpening = stream.state.phase == .awaitingOpenOK
        stream.state.receivedReset()
        statistics.resets[code, default: 0] += 1
        if wasOpening {
            // Opening failed: the user needs to know why their connection closed.
            let detail = reason.isEmpty ? code.summary : "\(code.summary) (\(reason))"
            logger.notice("connection to \(stream.target) failed: \(detail)", metadata: ["stream": "\(stream.id)"])
        } else if code != .closed {
            logger.info("stream to \(stream.target) reset by peer: \(code.summary)",
                        metadata: ["stream": "\(stream.id)", "reason": "\(reason)"])
        }
        removeStream(stream, closeEndpoint: true)
    }

    private func receivedGoAway(lastStreamID: StreamID, code: ResetCode, reason: String) {
        guard !receivedGoAway else { return }
        receivedGoAway = true
        logger.info("peer is draining the tunnel", metadata: ["reason": "\(reason)"])
        // Our streams above the peer's last accepted ID were never seen: fail them so their users retry.
        for stream in streams.values where stream.id.opener == role && stream.id > lastStreamID
            && stream.state.phase == .awaitingOpenOK && lastStreamID.opener == role {
            receivedReset(stream, code: .resourceLimit, reason: "the peer is shutting down")
        }
        delegate?.muxSessionDidReceiveGoAway(self, code: code, reason: reason)
        closeIfDrained()
    }

    // MARK: Endpoint events (from StreamBridgeHandler)

    func endpointRead(_ stream: MuxStream, _ buffer: ByteBuffer) {
        guard streams[stream.id] === stream, stream.state.canSend, !stream.outboundFinPending else { return }
        stream.outboundBytes += buffer.readableBytes
        stream.outbound.append(buffer)
        if stream.hasSendableWork { scheduler.markReady(stream.id) }
    }

    func endpointReadComplete(_ stream: MuxStream) {
        stream.readInFlight = false
        requestReadIfPossible(stream)
        flushOutbound()
    }

    func endpointInputClosed(_ stream: MuxStream) {
        guard streams[stream.id] === stream, stream.state.canSend else { return }
        stream.outboundFinPending = true
        scheduler.markReady(stream.id)
        flushOutbound()
    }

    func endpointClosed(_ stream: MuxStream) {
        guard streams[stream.id] === stream else { return }
        stream.endpoint = nil
        if stream.state.isClosed {
            removeStream(stream, closeEndpoint: false)
        } else if stream.inboundFinDelivered {
            // We had ended its output, so this close is its end-of-file (NIO reports a full close rather than
            // input-closed once both halves are shut). What it sent before still goes out, then our FIN.
            if !stream.state.sentFin && !stream.outboundFinPending {
                stream.outboundFinPending = true
                scheduler.markReady(stream.id)
            }
            finishIfDone(stream)
        } else {
            resetStream(stream, code: .closed, reason: "")
        }
        scheduleFlush()
    }

    // MARK: Stream plumbing

    private func installBridge(on endpoint: any Channel, for stream: MuxStream) {
        _ = endpoint.setOption(ChannelOptions.autoRead, value: false)
        _ = endpoint.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        do {
            try endpoint.pipeline.syncOperations.addHandler(StreamBridgeHandler(mux: self, stream: stream))
        } catch {
            logger.debug("could not bind stream to its connection", metadata: ["error": "\(error)"])
            endpoint.close(promise: nil)
        }
    }

    private func requestReadIfPossible(_ stream: MuxStream) {
        guard let endpoint = stream.endpoint, !stream.readInFlight, stream.state.canSend, !stream.outboundFinPending,
            stream.outboundBytes < configuration.streamReadHighWater,
            stream.state.sendWindow.available > stream.outboundBytes, peerHello != nil
        else { return }
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
        switch result {
        case .success:
            if let increment = stream.state.consumed(count) {
                enqueueControl(.windowUpdate(stream.id, increment: increment))
                scheduleFlush()
            }
            deliverFinIfDue(stream)
        case .failure(let error):
            logger.debug("write to stream endpoint failed", metadata: ["stream": "\(stream.id)", "error": "\(error)"])
            resetStream(stream, code: .closed, reason: "")
            scheduleFlush()
        }
    }

    private func flushEndpoint(_ stream: MuxStream) {
        stream.needsFlush = false
        stream.endpoint?.flush()
    }

    /// Passes the peer's FIN on as an end-of-file once every byte before it was written.
    private func deliverFinIfDue(_ stream: MuxStream) {
        guard stream.inboundFinPending, !stream.inboundFinDelivered, stream.writesInFlight == 0,
            let endpoint = stream.endpoint
        else { return }
        stream.inboundFinDelivered = true
        endpoint.close(mode: .output, promise: nil)
        finishIfDone(stream)
    }

    private func finishIfDone(_ stream: MuxStream) {
        guard stream.inboundFinDelivered, stream.state.finishIfDone() else { return }
        removeStream(stream, closeEndpoint: true)
    }

    private func resetStream(_ stream: MuxStream, code: ResetCode, reason: String) {
        if !stream.state.isClosed || streams[stream.id] === stream {
            enqueueControl(.reset(stream.id, code, reason: reason))
        }
        stream.state.sentReset()
        statistics.resets[code, default: 0] += 1
        if code != .closed {
            logger.debug("stream reset", metadata: ["stream": "\(stream.id)", "code": "\(code)", "reason": "\(reason)"])
        }
        removeStream(stream, closeEndpoint: true)
    }

    private func removeStream(_ stream: MuxStream, closeEndpoint: Bool) {
        guard streams[stream.id] === stream else { return }
        streams[stream.id] = nil
        scheduler.remove(stream.id)
        stream.outbound.removeAll()
        stream.outboundBytes = 0
        stream.backlog = []
        if closeEndpoint, let endpoint = stream.endpoint {
            stream.endpoint = nil
            endpoint.close(promise: nil)
        }
        closeIfDrained()
    }

    // MARK: Outbound

    private func enqueueControl(_ frame: MuxFrame) {
        guard let context, !closed else { return }
        let limit = Int(peerHello?.maxMessageSize ?? 64 << 10)
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
    /// payloads go down as slices of what was read from the local sockets; only the 9-byte headers are new.
    private func flushOutbound() {
        guard let context, !closed else { return }
        var wrote = false
        if let control = controlMessage {
            controlMessage = nil
            context.write(wrapOutboundOut(TunnelMessage(control)), promise: nil)
            wrote = true
        }
        if let peerHello, !scheduler.isEmpty, context.channel.isWritable {
            let messageLimit = min(configuration.sendMessageSize, Int(peerHello.maxMessageSize))
            var planned: [PlannedFrame] = []
            var payloads: [ByteBuffer] = []
            var size = 0
            // Streams whose FIN is in this batch end only after it is written: ending the last stream of a
            // draining tunnel closes the tunnel, and that must not happen with the frame still in `planned`.
            var finished: [MuxStream] = []
            defer { for stream in finished { finishIfDone(stream) } }
            while let id = scheduler.next() {
                guard let stream = streams[id], stream.hasSendableWork else { continue }
                let space = messageLimit - size - MuxFrame.headerSize
                // The quantum only matters when another stream is waiting; alone, a stream fills the message.
                let quantum = scheduler.isEmpty ? space : configuration.quantum
                let count = min(stream.outboundBytes, stream.state.sendWindow.available, quantum, space)
                let fin = stream.outboundFinPending && count == stream.outboundBytes
                if count > 0 || fin {
                    let first = payloads.count
                    stream.takeOutbound(count, into: &payloads)
                    planned.append(PlannedFrame(stream: id, length: count, fin: fin, payloads: first..<payloads.count))
                    statistics.bytesSent += count
                    size += MuxFrame.headerSize + count
                    stream.state.sentData(length: count, fin: fin)
                    if fin {
                        stream.outboundFinPending = false
                        finished.append(stream)
                    }
                }
                if streams[id] === stream {
                    if stream.hasSendableWork { scheduler.markReady(id) }
                    requestReadIfPossible(stream)
                }
                if size + MuxFrame.headerSize + 512 >= messageLimit {
                    writeDataMessage(planned, payloads: payloads, context: context)
                    planned.removeAll(keepingCapacity: true)
                    payloads.removeAll(keepingCapacity: true)
                    size = 0
                    wrote = true
                    if !context.channel.isWritable { break }
                }
            }
            if !planned.isEmpty {
                writeDataMessage(planned, payloads: payloads, context: context)
                wrote = true
            }
        }
        if wrote { context.flush() }
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

    // MARK: Session end

    private func keepaliveTick() {
        guard !closed, let context else { return }
        let silence = context.eventLoop.now - lastHeardFrom
        if silence >= configuration.keepaliveInterval * 3 {
            logger.warning("tunnel peer silent for \(silence.nanoseconds / 1_000_000_000) s; closing the tunnel")
            teardown(error: MuxSessionError.keepaliveTimeout)
            context.close(promise: nil)
        } else {
            // Every interval, silent or not: keeps NAT and proxy state alive and measures the round trip.
            ping()
        }
    }

    private func failSession(_ error: MuxProtocolError) {
        logger.error("\(error)")
        guard let context, !closed else { return }
        enqueueControl(.goAway(lastStreamID: highestRemoteStreamID, code: .protocolError, reason: error.detail))
        flushOutbound()
        teardown(error: error)
        context.close(promise: nil)
    }

    private func closeIfDrained() {
        guard (sentGoAway || receivedGoAway), streams.isEmpty, !closed, let context else { return }
        flushOutbound()
        teardown(error: nil)
        context.close(promise: nil)
    }

    private func teardown(error: (any Error)?) {
        guard !closed else { return }
        closed = true
        keepaliveTask?.cancel()
        keepaliveTask = nil
        let all = Array(streams.values)
        streams.removeAll()
        for stream in all {
            stream.state.receivedReset()
            guard let endpoint = stream.endpoint else { continue }
            stream.endpoint = nil
            if stream.writesInFlight > 0 {
                // What the peer sent before the tunnel ended (often in the same read as the close) still reaches
                // the local socket, then it closes; a reader that never takes it gets ten seconds.
                endpoint.writeAndFlush(endpoint.allocator.buffer(capacity: 0)).whenComplete { _ in
                    endpoint.close(promise: nil)
                }
                endpoint.eventLoop.scheduleTask(in: .seconds(10)) { endpoint.close(promise: nil) }
            } else {
                endpoint.close(promise: nil)
            }
        }
        let delegate = self.delegate
        self.delegate = nil
        delegate?.muxSessionDidClose(self, error: error)
    }
}
