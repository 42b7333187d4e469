import AditMux
import AditWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

#if canImport(Glibc)
import Glibc
#endif

/// Keeps the client's tunnel up and hands it the streams of every front: carries out what `TunnelLifecycle`
/// decides (dial, retry timers, draining), holds connections that arrive while the tunnel is down, and asks
/// the reverse forwards to listen on each new tunnel. Confined to the client's event loop, like the tunnel and
/// every local connection.
final class TunnelManager: StreamOpener {
    private let configuration: AditClient.Configuration
    let eventLoop: any EventLoop
    private let logger: Logger
    private var lifecycle: TunnelLifecycle
    private var sessions: [TunnelLifecycle.Attempt: Session] = [:]
    private var waiting = CircularBuffer<Waiting>()
    private var retryTask: Scheduled<Void>?
    /// Accepts the server's reverse streams and asks for the listeners of `-R` on every tunnel.
    var reverseForwards: ReverseForwards?
    /// Completed with the reason when dialling failed for good (credentials refused): the client stops; with nil
    /// when the client stops for another reason.
    let gaveUp: EventLoopPromise<String?>
    private var gaveUpCompleted = false

    private func completeGaveUp(_ reason: String?) {
        guard !gaveUpCompleted else { return }
        gaveUpCompleted = true
        gaveUp.succeed(reason)
    }

    /// The client stops for another reason: whoever waits for a permanent failure stops waiting.
    func stopWaitingForFailure() { completeGaveUp(nil) }

    private struct Session {
        var mux: MuxHandler?
        var webSocket: WebSocketConnectionHandler?
        var exporter: SessionMetricsExporter?
        var delegate: SessionDelegate
        var negotiated: String
        var server: Int
        var openedAt: NIODeadline = .now()
    }

    private final class Waiting {
        let request: MuxOpenRequest
        let endpoint: any MuxStreamEndpoint
        let promise: EventLoopPromise<Void>
        var timeout: Scheduled<Void>?
        var done = false
        init(request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>) {
            self.request = request
            self.endpoint = endpoint
            self.promise = promise
        }
    }

    init(configuration: AditClient.Configuration, eventLoop: any EventLoop, logger: Logger) {
        self.configuration = configuration
        self.eventLoop = eventLoop
        self.logger = logger
        var settings = TunnelLifecycle.Settings(servers: configuration.servers.map(\.description))
        settings.reconnectMinimum = configuration.reconnectMinimum
        settings.reconnectMaximum = configuration.reconnectMaximum
        self.lifecycle = TunnelLifecycle(settings: settings)
        self.gaveUp = eventLoop.makePromise()
    }

    /// Sessions that exist (a dial still under way is not waited for at shutdown: it is abandoned).
    var hasOpenSessions: Bool { sessions.values.contains { $0.mux.map { !$0.isClosed } ?? false } }
    var isTunnelReady: Bool { currentSession != nil }
    var lifecycleState: TunnelLifecycle.State { lifecycle.state }

    /// For the admin status page: the tunnel's state in a phrase.
    var stateSummary: String {
        switch lifecycle.state {
        case .idle: return "starting"
        case .dialing(_, let server): return "dialing \(configuration.servers[server])"
        case .ready: return "tunnel up"
        case .backoff(_, let server): return "waiting to redial \(configuration.servers[server])"
        case .failed(let reason): return "stopped: \(reason)"
        case .stopped: return "shutting down"
        }
    }

    /// For the admin status page: every session that exists (the current one, and any still draining).
    func sessionStatus() -> [AdminStatus.Session] {
        sessions.values.compactMap { session in
            guard let mux = session.mux else { return nil }
            // The identity is the server's business (a token says nothing readable); the peer is the server.
            return AdminStatus.session(mux: mux, webSocket: session.webSocket, identity: "-",
                                       peer: configuration.servers[session.server].description,
                                       openedAt: session.openedAt)
        }.sorted { $0.uptimeSeconds < $1.uptimeSeconds }
    }

    private var currentSession: MuxHandler? {
        guard let attempt = lifecycle.readyAttempt, let session = sessions[attempt] else { return nil }
        return session.mux
    }

    func start() {
        perform(lifecycle.start())
    }

    func stop() {
        completeGaveUp(nil)
        retryTask?.cancel()
        retryTask = nil
        perform(lifecycle.stop())
    }

    /// Closes every session now (the end of a drain that ran out of time).
    func closeAll() {
        for session in sessions.values { session.mux?.closeTunnel() }
    }

    // MARK: StreamOpener

    func openStream(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>) {
        if let metrics = configuration.metrics {
            promise.futureResult.whenComplete { result in
                switch result {
                case .success: metrics.streamOpen(outcome: "ok")
                case .failure(let error as MuxStreamOpenError):
                    if case .reset(let code, _) = error { metrics.streamOpen(outcome: code.metricLabel) } else {
                        metrics.streamOpen(outcome: "tunnel_closed")
                    }
                case .failure(is TunnelUnavailableError): metrics.streamOpen(outcome: "no_tunnel")
                case .failure: metrics.streamOpen(outcome: "failed")
                }
            }
        }
        if let session = currentSession {
            open(request, endpoint: endpoint, promise: promise, on: session, retriesLeft: 1)
            return
        }
        if let refusal = lifecycle.waitRefusal {
            promise.fail(TunnelUnavailableError(reason: refusal))
            return
        }
        // No tunnel right now: hold the connection (not reading from it) until one comes up, for a while.
        let entry = Waiting(request: request, endpoint: endpoint, promise: promise)
        entry.timeout = eventLoop.assumeIsolated().scheduleTask(in: configuration.waitForTunnel) { [self] in
            self.waitTimedOut(entry)
        }
        waiting.append(entry)
    }

    /// Opens on `session`; an open the server never saw (it was draining) goes to the next tunnel instead of
    /// failing, as long as nothing of it was sent.
    private func open(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>,
                      on session: MuxHandler, retriesLeft: Int) {
        let attempt = eventLoop.makePromise(of: Void.self)
        attempt.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success:
                promise.succeed(())
            case .failure(let error as MuxStreamOpenError) where error.isRetryable && retriesLeft > 0:
                self.logger.debug("retrying a connection on the next tunnel", metadata: ["reason": "\(error)"])
                self.openAgain(request, endpoint: endpoint, promise: promise, retriesLeft: retriesLeft - 1)
            case .failure(let error):
                promise.fail(error)
            }
        }
        session.openStream(request, endpoint: endpoint, promise: attempt)
    }

    private func openAgain(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>,
                           retriesLeft: Int) {
        if let session = currentSession {
            open(request, endpoint: endpoint, promise: promise, on: session, retriesLeft: retriesLeft)
        } else {
            openStream(request, endpoint: endpoint, promise: promise)
        }
    }

    private func waitTimedOut(_ entry: Waiting) {
        guard !entry.done else { return }
        entry.done = true
        let why = lifecycle.lastFailure.map { ": \($0)" } ?? ""
        let waited = TunnelLifecycle.seconds(configuration.waitForTunnel)
        entry.promise.fail(TunnelUnavailableError(
            reason: "no tunnel to \(configuration.servers[0]) within \(waited)\(why)"))
    }

    private func openWaiting(on session: MuxHandler) {
        let all = waiting
        waiting.removeAll()
        for entry in all where !entry.done {
            entry.done = true
            entry.timeout?.cancel()
            open(entry.request, endpoint: entry.endpoint, promise: entry.promise, on: session, retriesLeft: 1)
        }
    }

    private func failWaiting(_ reason: String) {
        let all = waiting
        waiting.removeAll()
        for entry in all where !entry.done {
            entry.done = true
            entry.timeout?.cancel()
            entry.promise.fail(TunnelUnavailableError(reason: reason))
        }
    }

    // MARK: Carrying out the lifecycle's actions

    private func perform(_ actions: [TunnelLifecycle.Action]) {
        for action in actions {
            switch action {
            case .dial(let attempt, let server):
                if attempt > 1 { configuration.metrics?.reconnects.increment() }
                dial(attempt, server: server)
            case .scheduleRetry(let attempt, _, let delay):
                retryTask?.cancel()
                let bound = NIOLoopBound(self, eventLoop: eventLoop)
                // Jitter so that many clients do not come back in lockstep after a server restart.
                let jitter = TimeAmount.nanoseconds(Int64.random(in: 0...max(1, delay.nanoseconds / 5)))
                retryTask = eventLoop.scheduleTask(in: delay == .zero ? .zero : delay + jitter) {
                    bound.value.retryTask = nil
                    bound.value.perform(bound.value.lifecycle.retryDue(attempt))
                }
            case .openWaiting(let attempt):
                if let session = sessions[attempt], let mux = session.mux {
                    reverseForwards?.sessionReady(mux)
                    openWaiting(on: mux)
                }
            case .failWaiting(let reason):
                failWaiting(reason)
                if case .failed = lifecycle.state { completeGaveUp(reason) }
            case .closeSession(let attempt):
                sessions[attempt]?.mux?.closeTunnel()
            case .drainSessions(let attempts):
                for attempt in attempts {
                    sessions[attempt]?.mux?.beginDrain(reason: "the client is shutting down")
                }
            case .log(let line):
                switch line.level {
                case .debug: logger.debug("\(line.message)")
                case .notice:
                    if line.message.contains(" is up"), let attempt = lifecycle.readyAttempt, let session = sessions[attempt] {
                        let negotiated = session.negotiated
                        logger.notice("\(line.message); \(negotiated)")
                    } else {
                        logger.notice("\(line.message)")
                    }
                case .warning: logger.warning("\(line.message)")
                case .error: logger.error("\(line.message)")
                }
            }
        }
    }

    private func dial(_ attempt: TunnelLifecycle.Attempt, server: Int) {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        let config = configuration
        let logger = self.logger
        let delegate = SessionDelegate(attempt: attempt, manager: self)
        sessions[attempt] = Session(mux: nil, webSocket: nil, exporter: nil, delegate: delegate, negotiated: "", server: server)
        let dialer = config.dialer(server: server)
        logger.debug("dialling the tunnel server", metadata: ["url": "\(config.servers[server])"])
        dialer.dial(on: eventLoop) { channel, agreement in
            var wsConfig = WebSocketConnectionHandler.Configuration()
            wsConfig.maxMessageSize = Int(config.mux.maxReceiveMessageSize)
            wsConfig.deflate = agreement
            wsConfig.compression = config.compression
            let webSocket = WebSocketConnectionHandler(role: .client, configuration: wsConfig, logger: logger)
            var muxConfig = config.mux
            muxConfig.features = [.datagrams]
            let mux = MuxHandler(role: .client, configuration: muxConfig, logger: logger, delegate: delegate)
            let manager = bound.value
            manager.sessions[attempt]?.mux = mux
            manager.sessions[attempt]?.webSocket = webSocket
            manager.sessions[attempt]?.openedAt = .now()
            manager.sessions[attempt]?.negotiated = agreement?.summary
                ?? (config.compression.mode == .off ? "compression off" : "no compression (the server declined)")
            if let metrics = config.metrics {
                manager.sessions[attempt]?.exporter =
                    SessionMetricsExporter(metrics: metrics, session: mux, webSocket: webSocket, eventLoop: channel.eventLoop)
            }
            let sync = channel.pipeline.syncOperations
            try sync.addHandler(webSocket)
            try sync.addHandler(mux)
        }.whenComplete { result in
            guard case .failure(let error) = result else { return }
            // Success continues in sessionReady, when the server's HELLO arrives.
            let manager = bound.value
            manager.forget(attempt)
            manager.perform(manager.lifecycle.dialFailed(attempt, reason: dialer.describe(error),
                                                         permanent: dialer.isPermanent(error)))
        }
    }

    private func forget(_ attempt: TunnelLifecycle.Attempt) {
        guard let session = sessions.removeValue(forKey: attempt) else { return }
        session.exporter?.close()
        if let statistics = session.webSocket?.compressionStatistics {
            logger.info("tunnel compression: \(statistics.summary)")
        }
    }

    // MARK: Session events (through SessionDelegate, which knows its attempt)

    fileprivate func sessionReady(_ attempt: TunnelLifecycle.Attempt) {
        perform(lifecycle.sessionReady(attempt))
    }

    fileprivate func sessionGoAway(_ attempt: TunnelLifecycle.Attempt, reason: String) {
        perform(lifecycle.goAwayReceived(attempt, reason: reason))
    }

    fileprivate func sessionClosed(_ attempt: TunnelLifecycle.Attempt, error: (any Error)?) {
        forget(attempt)
        let why = error.map(describeTunnelError) ?? "the server closed it"
        perform(lifecycle.sessionClosed(attempt, reason: why))
    }

    fileprivate func reverseOpen(_ session: MuxHandler, stream: StreamID, request: MuxOpenRequest) {
        guard let reverseForwards else {
            session.reject(stream, code: .notAllowed, reason: "this client has no -R forwards")
            return
        }
        reverseForwards.accept(session, stream: stream, request: request)
    }

    fileprivate func listenerClosed(_ session: MuxHandler, listener: StreamID, code: ResetCode, reason: String) {
        reverseForwards?.listenerClosed(session, listener: listener, code: code, reason: reason)
    }
}

/// One session's link to the manager: knows which dial it came from, so events of old sessions are told apart.
private final class SessionDelegate: MuxSessionDelegate {
    let attempt: TunnelLifecycle.Attempt
    weak var manager: TunnelManager?

    init(attempt: TunnelLifecycle.Attempt, manager: TunnelManager) {
        self.attempt = attempt
        self.manager = manager
    }

    func muxSessionDidBecomeReady(_ session: MuxHandler) { manager?.sessionReady(attempt) }

    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest) {
        guard let manager else {
            session.reject(stream, code: .resourceLimit, reason: "the client is shutting down")
            return
        }
        manager.reverseOpen(session, stream: stream, request: request)
    }

    func muxSession(_ session: MuxHandler, listenerDidClose listener: StreamID, code: ResetCode, reason: String) {
        manager?.listenerClosed(session, listener: listener, code: code, reason: reason)
    }

    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {
        manager?.sessionGoAway(attempt, reason: reason)
    }

    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {
        manager?.sessionClosed(attempt, error: error)
    }
}

func seconds(_ t: TimeAmount) -> String { TunnelLifecycle.seconds(t) }

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
        case ECONNRESET, EPIPE:
            return "\(url.host):\(url.port) reset the connection before answering (is it \(what == "adit server" ? "an Adit server" : what), and is the URL's scheme, ws:// or wss://, the one it speaks?)"
        default: return "\(url.host):\(url.port): \(describeErrno(io.errnoCode))"
        }
    }
    if let channelError = error as? ChannelError, case .connectTimeout = channelError {
        return "connection timed out"
    }
    return "\(error)"
}

/// An errno as the C library words it ("Connection reset by peer"), without NIO's system-call name.
func describeErrno(_ code: Int32) -> String {
    String(cString: strerror(code)) + " (errno \(code))"
}
