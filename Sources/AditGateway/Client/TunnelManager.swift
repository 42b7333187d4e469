import AditMux
import AditWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Keeps one tunnel to the server up (dialling again with backoff when it drops) and hands it the local
/// connections. Confined to the client's event loop, like the tunnel and every local connection.
final class TunnelManager: MuxSessionDelegate {
    struct Pending {
        var channel: any Channel
        var target: MuxTarget
        var timeout: Scheduled<Void>?
    }

    private let configuration: AditClient.Configuration
    private let eventLoop: any EventLoop
    private let logger: Logger
    private var session: MuxHandler?
    private var connecting = false
    private var stopped = false
    private var backoff: TimeAmount
    private var pending: [ObjectIdentifier: Pending] = [:]
    private var pendingOrder: [ObjectIdentifier] = []
    private var lastFailure: String?
    private var retryTask: Scheduled<Void>?
    private var sessions: [ObjectIdentifier: MuxHandler] = [:]
    private var failuresInARow = 0
    private var exporters: [ObjectIdentifier: SessionMetricsExporter] = [:]
    private var webSockets: [ObjectIdentifier: WebSocketConnectionHandler] = [:]
    private var negotiated: String?

    init(configuration: AditClient.Configuration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        self.backoff = configuration.reconnectMinimum
    }

    var hasOpenSessions: Bool { !sessions.isEmpty }

    func start() {
        connect()
    }

    /// A local connection arrived for `target`.
    func handle(connection channel: any Channel, target: MuxTarget) {
        guard !stopped else {
            channel.close(promise: nil)
            return
        }
        if let session, session.isReady {
            open(channel, target: target, on: session)
            return
        }
        // No tunnel yet: hold the connection (not reading from it) until one comes up, for a while.
        let id = ObjectIdentifier(channel)
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let timeout = eventLoop.scheduleTask(in: configuration.pendingTimeout) {
            bound.value.pendingTimedOut(id)
        }
        pending[id] = Pending(channel: channel, target: target, timeout: timeout)
        pendingOrder.append(id)
        channel.closeFuture.whenComplete { _ in
            bound.value.pending.removeValue(forKey: id)?.timeout?.cancel()
        }
        if !connecting && retryTask == nil { connect() }
    }

    private func open(_ channel: any Channel, target: MuxTarget, on session: MuxHandler) {
        do {
            try session.openStream(to: target, endpoint: channel)
        } catch {
            logger.warning("cannot forward a connection to \(target): \(error)")
            channel.close(promise: nil)
        }
    }

    private func pendingTimedOut(_ id: ObjectIdentifier) {
        guard let entry = pending.removeValue(forKey: id) else { return }
        let why = lastFailure.map { ": \($0)" } ?? ""
        logger.warning("closing a connection to \(entry.target): no tunnel to \(configuration.url) within \(configuration.pendingTimeout.nanoseconds / 1_000_000_000) s\(why)")
        entry.channel.close(promise: nil)
    }

    private func drainPending(into session: MuxHandler) {
        let order = pendingOrder
        pendingOrder = []
        for id in order {
            guard let entry = pending.removeValue(forKey: id) else { continue }
            entry.timeout?.cancel()
            open(entry.channel, target: entry.target, on: session)
        }
    }

    // MARK: Dialling

    private func connect() {
        guard !stopped, !connecting else { return }
        connecting = true
        retryTask = nil
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let config = configuration
        let logger = self.logger
        logger.debug("dialling the tunnel server", metadata: ["url": "\(config.url)"])
        config.dialer.dial(on: eventLoop) { channel, agreement in
            var wsConfig = WebSocketConnectionHandler.Configuration()
            wsConfig.maxMessageSize = Int(config.mux.maxReceiveMessageSize)
            wsConfig.deflate = agreement
            wsConfig.compression = config.compression
            let webSocket = WebSocketConnectionHandler(role: .client, configuration: wsConfig, logger: logger)
            let mux = MuxHandler(role: .client, configuration: config.mux, logger: logger, delegate: bound.value)
            bound.value.sessions[ObjectIdentifier(mux)] = mux
            bound.value.webSockets[ObjectIdentifier(mux)] = webSocket
            bound.value.negotiated = agreement?.summary
                ?? (config.compression.mode == .off ? "compression off" : "no compression (the server declined)")
            if let metrics = config.metrics {
                bound.value.exporters[ObjectIdentifier(mux)] =
                    SessionMetricsExporter(metrics: metrics, session: mux, webSocket: webSocket, eventLoop: channel.eventLoop)
            }
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(webSocket)
            try sync.addHandler(mux)
        }.whenComplete { result in
            let manager = bound.value
            if case .failure(let error) = result {
                manager.connecting = false
                manager.dialFailed(config.dialer.describe(error))
            }
            // Success continues in muxSessionDidBecomeReady, when the server's HELLO arrives.
        }
    }

    private func dialFailed(_ why: String) {
        lastFailure = why
        failuresInARow += 1
        let delay = backoff
        backoff = min(backoff * 2, configuration.reconnectMaximum)
        let level: Logger.Level = failuresInARow <= 3 || failuresInARow % 10 == 0 ? .warning : .debug
        logger.log(level: level, "cannot reach the tunnel server \(configuration.url): \(why); retrying in \(seconds(delay))")
        scheduleRetry(after: delay)
    }

    private func scheduleRetry(after delay: TimeAmount) {
        guard !stopped else { return }
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        // Jitter so that many clients do not come back in lockstep after a server restart.
        let jitter = TimeAmount.nanoseconds(Int64.random(in: 0...max(1, delay.nanoseconds / 5)))
        retryTask = eventLoop.scheduleTask(in: delay + jitter) {
            bound.value.retryTask = nil
            bound.value.connect()
        }
    }

    // MARK: MuxSessionDelegate

    func muxSessionDidBecomeReady(_ session: MuxHandler) {
        connecting = false
        if stopped {
            session.beginDrain(reason: "the client is shutting down")
            return
        }
        self.session = session
        backoff = configuration.reconnectMinimum
        let how = negotiated.map { "; \($0)" } ?? ""
        if failuresInARow > 0 || lastFailure != nil {
            logger.notice("tunnel to \(configuration.url) is up again\(how)")
        } else {
            logger.notice("tunnel to \(configuration.url) is up\(how)")
        }
        failuresInARow = 0
        lastFailure = nil
        drainPending(into: session)
    }

    func muxSession(_ session: MuxHandler, didReceiveOpenFor stream: StreamID, target: MuxTarget) {
        // Reverse forwarding (-R) is not configured: the client accepts no streams.
        session.reject(stream, code: .notAllowed, reason: "this client accepts no reverse streams")
    }

    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {
        logger.notice("the server is draining the tunnel (\(reason)); new connections wait for a new tunnel")
        if self.session === session {
            self.session = nil
            scheduleRetry(after: configuration.reconnectMinimum)
        }
    }

    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {
        sessions.removeValue(forKey: ObjectIdentifier(session))
        exporters.removeValue(forKey: ObjectIdentifier(session))?.close()
        if let statistics = webSockets.removeValue(forKey: ObjectIdentifier(session))?.compressionStatistics {
            logger.info("tunnel compression: \(statistics.summary)")
        }
        let wasCurrent = self.session === session
        if wasCurrent { self.session = nil }
        if connecting && !wasCurrent { connecting = false }  // closed before it became ready
        guard !stopped else { return }
        let why = error.map { "\($0)" } ?? "the server closed it"
        if wasCurrent {
            lastFailure = why
            let delay = configuration.reconnectMinimum
            logger.warning("tunnel lost: \(why); reconnecting in \(seconds(delay))")
            scheduleRetry(after: delay)
        } else if retryTask == nil && !connecting && self.session == nil {
            dialFailed(why)
        }
    }

    // MARK: Shutdown

    func stop() {
        stopped = true
        retryTask?.cancel()
        retryTask = nil
        for entry in pending.values {
            entry.timeout?.cancel()
            entry.channel.close(promise: nil)
        }
        pending = [:]
        for session in sessions.values { session.beginDrain(reason: "the client is shutting down") }
    }

    func closeAll() {
        for session in sessions.values { session.closeTunnel() }
    }
}

func seconds(_ t: TimeAmount) -> String {
    let s = Double(t.nanoseconds) / 1e9
    return s < 10 ? "\((s * 10).rounded() / 10) s" : "\(Int(s)) s"
}

/// One sentence for why dialling the server failed.
func describeConnectError(_ error: any Error, url: TunnelURL, what: String = "adit server") -> String {
    if let connection = error as? NIOConnectionError {
        if connection.connectionErrors.isEmpty {
            return "\(url.host) did not resolve"
        }
        return connection.connectionErrors.map { describeConnectError($0.error, url: url, what: what) }.first ?? "\(error)"
    }
    if let io = error as? IOError {
        switch io.errnoCode {
        case ECONNREFUSED: return "connection refused (is \(what) running on \(url.host):\(url.port)?)"
        case ENETUNREACH, EHOSTUNREACH: return "network unreachable"
        case ETIMEDOUT: return "connection timed out"
        default: return "\(io)"
        }
    }
    if let channelError = error as? ChannelError, case .connectTimeout = channelError {
        return "connection timed out"
    }
    return "\(error)"
}
