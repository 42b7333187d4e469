import AditMux
import Logging
import NIOCore
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// The server's side of one tunnel: checks each OPEN against the policy, connects the target (TCP, or UDP for a
/// datagram stream) and binds it; for each LISTEN (`-R`) checks the reverse policy, listens on the tunnel's event
/// loop and opens a stream back for every connection (or UDP sender) that arrives. A session's listeners are
/// closed the moment the session ends, so the ports are free for the client's next tunnel.
final class ServerSession: MuxSessionDelegate {
    struct Settings {
        var connector: TargetConnector
        /// Which binds `--allow-reverse` permits; empty permits none.
        var reversePolicy: TargetPolicy
        var channelOptions: TunnelChannelOptions
        var udpIdleTimeout: TimeAmount
        var refusalLog: RateLimitedLog
    }

    private var settings: Settings
    private let logger: Logger
    private let onClose: (MuxHandler) -> Void
    private(set) weak var mux: MuxHandler?
    /// Listeners bound for the client, by the LISTEN stream that asked for them.
    private var listeners: [StreamID: (channel: any Channel, kind: MuxStreamKind)] = [:]
    /// LISTENs whose bind is under way (a RESET or the session's end in the meantime cancels them).
    private var binding: Set<StreamID> = []
    private var closed = false

    init(settings: Settings, logger: Logger, onClose: @escaping (MuxHandler) -> Void) {
        self.settings = settings
        self.logger = logger
        self.onClose = onClose
    }

    /// The users file was reloaded and this session's user kept its credentials: new streams and listeners follow
    /// the new rules at once (streams already open go on).
    func update(policy: TargetPolicy, reversePolicy: TargetPolicy) {
        settings.connector = settings.connector.with(policy: policy)
        settings.reversePolicy = reversePolicy
    }

    func attach(_ mux: MuxHandler) {
        self.mux = mux
        mux.delegate = self
    }

    func muxSessionDidBecomeReady(_ session: MuxHandler) {
        logger.debug("tunnel session ready")
    }

    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest) {
        let logger = self.logger
        let refusalLog = settings.refusalLog
        let target = request.target
        let idle = settings.udpIdleTimeout
        settings.connector.connect(target, kind: request.kind, on: session.eventLoop!).assumeIsolated().whenComplete { result in
            switch result {
            case .success(let channel):
                logger.debug("stream connected", metadata: ["stream": "\(stream)", "target": "\(request)"])
                session.accept(stream, endpoint: request.kind == .datagram
                    ? DatagramChannelEndpoint(channel, idleTimeout: idle) : ChannelStreamEndpoint(channel))
            case .failure(let error):
                let failure = (error as? TargetConnector.Failure)
                    ?? TargetConnector.Failure(code: .internalError, reason: "\(error)")
                refusalLog.log(logger, level: .info, "stream refused: \(failure.reason)",
                               metadata: ["stream": "\(stream)", "code": "\(failure.code)"])
                session.reject(stream, code: failure.code, reason: failure.reason)
            }
        }
    }

    /// The access log: one line per stream at its end, with who (the session logger carries user and peer),
    /// what, how much each way, how long and how it ended. Refusals are logged where they are decided.
    func muxSession(_ session: MuxHandler, streamDidEnd record: MuxStreamRecord) {
        // The line's metadata costs more than the rest of a short stream's bookkeeping: build it only when logged.
        guard logger.logLevel <= .info else { return }
        let what: String
        if let listener = record.request.listener {
            let bound = listeners[listener].map { Self.shown($0.channel, $0.kind) } ?? "a reverse listener"
            what = "reverse connection from \(record.request.target) on \(bound)"
        } else {
            what = "stream to \(record.request)"
        }
        let ended: String
        switch record.end {
        case .finished: ended = "finished"
        case .resetByPeer(.closed, _): ended = "closed early by the client"
        case .resetByPeer(let code, _): ended = "reset by the client (\(code.summary))"
        case .resetByUs(.closed, _): ended = "closed early by the target"
        case .resetByUs(let code, _): ended = "reset by the server (\(code.summary))"
        case .tunnelClosed: ended = "cut by the tunnel's end"
        }
        let milliseconds = record.duration.nanoseconds / 1_000_000
        var metadata: Logger.Metadata = [
            "stream": "\(record.id)",
            "target": "\(record.request.listener == nil ? "\(record.request)" : "\(record.request.target)")",
            "bytes_from_client": .stringConvertible(record.bytesFromPeer),
            "bytes_to_client": .stringConvertible(record.bytesToPeer),
            "duration_ms": .stringConvertible(milliseconds),
            "end": "\(ended)",
        ]
        if logger[metadataKey: "user"] == nil { metadata["user"] = "-" }
        if record.request.listener != nil { metadata["direction"] = "reverse" }
        logger.info("access: \(what) \(ended), \(record.bytesFromPeer) B from the client, \(record.bytesToPeer) B to it, \(Self.seconds(milliseconds)) s",
                    metadata: metadata)
    }

    private static func seconds(_ milliseconds: Int64) -> String {
        let whole = milliseconds / 1000, fraction = milliseconds % 1000
        return "\(whole).\(String(repeating: "0", count: 3 - "\(fraction)".count))\(fraction)"
    }

    // MARK: Reverse forwarding

    func muxSession(_ session: MuxHandler, didReceiveListen listener: StreamID, request: MuxListenRequest) {
        let bind = request.bind
        let shown = "\(bind)\(request.kind == .datagram ? "/udp" : "")"
        guard settings.reversePolicy.allows(bind, kind: request.kind) else {
            let why = settings.reversePolicy.patterns.isEmpty
                ? "\(shown) is not allowed: the server has no --allow-reverse rule"
                : "\(shown) is not allowed by the server's --allow-reverse rules"
            settings.refusalLog.log(logger, "reverse listener refused: \(why)")
            session.reject(listener, code: .notAllowed, reason: why)
            return
        }
        binding.insert(listener)
        let eventLoop = session.eventLoop!
        let bound: EventLoopFuture<any Channel> = request.kind == .datagram
            ? bindDatagram(bind, listener: listener, session: session, eventLoop: eventLoop)
            : bindStream(bind, listener: listener, session: session, eventLoop: eventLoop)
        bound.assumeIsolated().whenComplete { [self] result in
            let wanted = self.binding.remove(listener) != nil && !self.closed
            switch result {
            case .success(let channel):
                guard wanted else {
                    channel.close(promise: nil)
                    return
                }
                self.listeners[listener] = (channel, request.kind)
                let address = channel.localAddress
                let actual = MuxTarget(hostText: address?.ipAddress ?? bind.hostText, port: UInt16(address?.port ?? Int(bind.port)))
                self.logger.notice("reverse listener on \(actual)\(request.kind == .datagram ? "/udp" : "") for this tunnel")
                session.acceptListen(listener, bound: actual)
            case .failure(let error):
                guard wanted else { return }
                let inUse = (error as? IOError)?.errnoCode == EADDRINUSE
                let why = inUse ? "\(shown) is already in use (another client's -R, or another program)"
                    : "cannot listen on \(shown): \(describeBindError(error))"
                self.logger.notice("reverse listener refused: \(why)")
                session.reject(listener, code: inUse ? .resourceLimit : .unreachable, reason: why)
            }
        }
    }

    private func bindStream(_ bind: MuxTarget, listener: StreamID, session: MuxHandler,
                            eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let opener = NIOLoopBound(WeakMux(session), eventLoop: eventLoop)
        let logger = self.logger
        let bootstrap = ServerBootstrap(group: eventLoop, childGroup: eventLoop)
        return settings.channelOptions.apply(toEndpointListener: bootstrap) { channel in
            try channel.pipeline.syncOperations.addHandler(AcceptedConnectionHandler { channel in
                guard let session = opener.value.mux else {
                    channel.close(promise: nil)
                    return
                }
                let origin = channel.remoteAddress.flatMap(MuxTarget.init(socketAddress:))
                    ?? MuxTarget(hostText: "0.0.0.0", port: 1)
                let endpoint = ChannelStreamEndpoint(channel)
                let promise = channel.eventLoop.makePromise(of: Void.self)
                promise.futureResult.assumeIsolated().whenFailure { error in
                    logger.info("reverse connection from \(origin) not carried: \(error)")
                    endpoint.close(abort: true)
                }
                session.openStream(MuxOpenRequest(target: origin, listener: listener), endpoint: endpoint,
                                   promise: promise)
            })
        }
        .bind(host: bind.hostText, port: Int(bind.port))
    }

    private func bindDatagram(_ bind: MuxTarget, listener: StreamID, session: MuxHandler,
                              eventLoop: any EventLoop) -> EventLoopFuture<any Channel> {
        let weakSession = WeakMux(session)
        let framing = DatagramFlowTable.Framing(
            inbound: { envelope in
                guard let origin = MuxTarget(socketAddress: envelope.remoteAddress) else { return nil }
                return (.sender(envelope.remoteAddress), envelope.data,
                        MuxOpenRequest(target: origin, kind: .datagram, listener: listener))
            },
            outbound: { key, payload in
                guard case .sender(let address) = key else { return nil }
                return AddressedEnvelope(remoteAddress: address, data: payload)
            })
        let table = DatagramFlowTable(framing: framing, idleTimeout: settings.udpIdleTimeout, logger: logger) { request, flow, promise in
            guard let session = weakSession.mux else {
                promise.fail(MuxStreamOpenError.session(.sessionClosed, unprocessed: false))
                return
            }
            session.openStream(request, endpoint: flow, promise: promise)
        }
        return DatagramBootstrap(group: eventLoop)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_rcvbuf), value: DatagramFlowTable.socketReceiveBuffer)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
            .bind(host: bind.hostText, port: Int(bind.port))
            .assumeIsolated()
            .flatMapThrowing { channel -> any Channel in
                try channel.pipeline.syncOperations.addHandler(table)
                return channel
            }
            .nonisolated()
    }

    func muxSession(_ session: MuxHandler, listenerDidClose listener: StreamID, code: ResetCode, reason: String) {
        binding.remove(listener)
        if let (channel, kind) = listeners.removeValue(forKey: listener) {
            logger.info("reverse listener on \(Self.shown(channel, kind)) closed")
            channel.close(promise: nil)
        }
    }

    // MARK: Session end

    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {
        logger.info("client is closing the tunnel", metadata: ["reason": "\(reason)"])
    }

    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {
        closed = true
        binding.removeAll()
        for (channel, kind) in listeners.values {
            logger.info("reverse listener on \(Self.shown(channel, kind)) closed with its tunnel")
            channel.close(promise: nil)
        }
        listeners.removeAll()
        if let error {
            logger.info("tunnel closed: \(describeTunnelError(error))")
        } else {
            logger.info("tunnel closed")
        }
        onClose(session)
    }

    private static func shown(_ channel: any Channel, _ kind: MuxStreamKind) -> String {
        (channel.localAddress?.shown ?? "?") + (kind == .datagram ? "/udp" : "")
    }
}

private final class WeakMux {
    weak var mux: MuxHandler?
    init(_ mux: MuxHandler) { self.mux = mux }
}

extension MuxTarget {
    init?(socketAddress: SocketAddress) {
        guard let ip = socketAddress.ipAddress, let port = socketAddress.port, (1...65535).contains(port) else { return nil }
        self.init(hostText: ip, port: UInt16(port))
    }
}
