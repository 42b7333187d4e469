import AditMux
import AditTransport
import AditWebSocket
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// `adit server`: accepts tunnels over WebSocket and splices their streams to the targets the policy allows.
public final class AditServer: Service, AdminStatusSource, @unchecked Sendable {
    public struct Configuration: Sendable {
        public var listen: HostPort
        public var policy: TargetPolicy
        /// `--allow-reverse`: where clients may ask the server to listen for them (`-R`); empty allows nothing.
        public var reversePolicy = TargetPolicy(patterns: [])
        /// A UDP flow with no datagram either way for this long is closed.
        public var udpIdleTimeout: TimeAmount = .seconds(60)
        /// The users (`--users`): with any, every tunnel needs a credential; nil lets anyone in (anonymous).
        public var users: [UserRecord]?
        /// `--users FILE`, watched and reloaded; nil when `users` came from elsewhere.
        public var usersFile: String?
        /// `--allow-origin`: the web pages whose browsers may connect.
        public var allowedOrigins: [String]?
        /// Tunnels at once: in all, per client address, per user.
        public var sessionLimits = SessionLimits()
        /// `--trusted-proxy`: reverse proxies whose `X-Forwarded-For` names the client.
        public var trustedProxies = TrustedProxies()
        /// A client that has not finished its upgrade request by then is closed (slowloris).
        public var handshakeTimeout: TimeAmount = .seconds(10)
        public var path = "/"
        public var mux = MuxConfiguration()
        public var channelOptions = TunnelChannelOptions()
        public var connectTimeout: TimeAmount = .seconds(10)
        /// On shutdown, how long streams may take to finish after GOAWAY.
        public var drainTimeout: TimeAmount = .seconds(30)
        public var threads = System.coreCount
        /// Where session totals go; nil exports nothing.
        public var metrics: TunnelMetrics?
        /// permessage-deflate, for the tunnel and the raw bridges.
        public var compression = CompressionSettings()
        /// `--raw PATH=HOST:PORT` bridges, besides the tunnel on `path`.
        public var rawRoutes: [RawBridgeRoute] = []
        /// Largest message a raw bridge accepts (after inflating); the tunnel's is `mux.maxReceiveMessageSize`.
        public var rawMaxMessageSize = 16 << 20
        /// wss://: the certificate and key, and the CA for client certificates.
        public var tls: ServerTLSSettings?

        public init(listen: HostPort, policy: TargetPolicy) {
            self.listen = listen
            self.policy = policy
        }
    }

    public let configuration: Configuration
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let ownsGroup: Bool
    private let sessions = NIOLockedValueBox<[ObjectIdentifier: SessionRecord]>([:])
    /// Who may connect, and with which rules: replaced whole when the users file is reloaded.
    private let access: NIOLockedValueBox<AccessControl>
    /// Wrong passwords by address: a few are forgiven, then the address waits (scrypt is expensive to check).
    private let passwordFailures = NIOLockedValueBox(FailureThrottle())
    /// Refusals (of tunnels, streams, listeners) are logged at most a few a second: a peer cannot flood the log.
    let refusalLog = RateLimitedLog()
    private let sessionCounter: SessionCounter

    struct SessionRecord {
        var mux: NIOLoopBound<MuxHandler>
        var session: NIOLoopBound<ServerSession>
        var webSocket: NIOLoopBound<WebSocketConnectionHandler>
        var identity: Identity
        var peer: String
        var openedAt: NIODeadline
    }
    /// Listening, then draining: what `/readyz` answers.
    private let phase = NIOLockedValueBox(Phase.starting)
    private enum Phase { case starting, listening, draining }
    private let startedAt = NIODeadline.now()
    private let watcher = NIOLockedValueBox<UsersFileWatcher?>(nil)
    /// Open raw-bridge WebSockets, so that shutdown can wait for them and then close them with 1001.
    private let rawBridges = NIOLockedValueBox<[ObjectIdentifier: any Channel]>([:])
    private let boundAddress = NIOLockedValueBox<SocketAddress?>(nil)
    private var listener: (any Channel)?
    private let started: EventLoopPromise<SocketAddress>

    public init(configuration: Configuration, logger: Logger, group: MultiThreadedEventLoopGroup? = nil) {
        self.configuration = configuration
        self.logger = logger
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: max(1, configuration.threads))
        self.ownsGroup = group == nil
        self.started = self.group.any().makePromise()
        self.sessionCounter = SessionCounter(limits: configuration.sessionLimits)
        self.access = NIOLockedValueBox(AccessControl(directory: configuration.users.map(UserDirectory.init(users:)),
                                                      defaultPolicy: configuration.policy,
                                                      defaultReversePolicy: configuration.reversePolicy,
                                                      allowedOrigins: configuration.allowedOrigins))
    }

    /// The address the server listens on, once it does (port 0 resolved).
    public var localAddress: EventLoopFuture<SocketAddress> { started.futureResult }

    public var sessionCount: Int { sessions.withLockedValue { $0.count } }

    public func run() async throws {
        do {
            try await start()
        } catch {
            started.fail(error)
            try? await shutdownGroup()
            throw error
        }
        await withGracefulShutdownHandler {
            try? await self.listener?.closeFuture.get()
        } onGracefulShutdown: {
            self.phase.withLockedValue { $0 = .draining }
            self.listener?.close(promise: nil)
        }
        phase.withLockedValue { $0 = .draining }
        watcher.withLockedValue { $0?.stop() }
        await drain()
        try? await shutdownGroup()
    }

    func start() async throws {
        let config = configuration
        let tlsContext = try config.tls?.makeContext()
        let connector = TargetConnector(policy: config.policy, connectTimeout: config.connectTimeout,
                                        channelOptions: config.channelOptions)
        let logger = self.logger
        let bootstrap = config.channelOptions.apply(toTunnelListener: ServerBootstrap(group: group))
            .childChannelInitializer { [weak self] channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tlsContext {
                        try channel.pipeline.syncOperations.addHandler(PlaintextOnTLSPortHandler(logger: logger))
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: tlsContext))
                        try channel.pipeline.syncOperations.addHandler(TLSFailureLogger(logger: logger))
                    }
                    try self?.initializeTunnel(channel, connector: connector, logger: logger)
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: config.listen.host, port: config.listen.port).get()
        } catch {
            throw ConfigurationError("cannot listen on \(config.listen): \(describeBindError(error))")
        }
        listener = channel
        if let path = config.usersFile {
            let watcher = UsersFileWatcher(path: path, logger: logger) { [weak self] users in self?.reload(users: users) }
            watcher.start()
            self.watcher.withLockedValue { $0 = watcher }
        }
        let address = channel.localAddress!
        boundAddress.withLockedValue { $0 = address }
        phase.withLockedValue { $0 = .listening }
        started.succeed(address)
        let shown = HostPort(host: address.ipAddress ?? config.listen.host, port: address.port ?? 0)
        let scheme = config.tls == nil ? "ws" : "wss"
        let reverse = config.reversePolicy.patterns.isEmpty ? "" : "; reverse binds allowed: \(config.reversePolicy.description)"
        logger.notice("listening on \(scheme)://\(shown)\(config.path); targets allowed: \(config.policy.patterns.isEmpty ? "none" : config.policy.description)\(reverse); compression \(config.compression.mode.rawValue)")
        for route in config.rawRoutes {
            logger.notice("raw WebSocket bridge on \(route.path) to \(route.target)")
            // A name may still be allowed once resolved; TargetConnector decides that on every connection.
            if case .name = route.target.host {
            } else if !config.policy.allows(route.target) {
                logger.warning("the raw bridge \(route.path) -> \(route.target) is not allowed by any --allow rule; its connections will be refused")
            }
        }
    }

    /// A new users file: new tunnels and new streams follow it at once; tunnels of users that were removed or
    /// whose credentials changed are closed.
    func reload(users: [UserRecord]) {
        let access = self.access.withLockedValue { access -> AccessControl in
            access.directory = UserDirectory(users: users)
            return access
        }
        apply(access)
    }

    /// New server-wide rules (SIGHUP with a changed `--config` file): `--allow`, `--allow-reverse` and
    /// `--allow-origin`. New tunnels and streams follow them at once, and so do open tunnels of the anonymous
    /// user and of users without rules of their own.
    public func reload(policy: TargetPolicy, reversePolicy: TargetPolicy, allowedOrigins: [String]?) {
        let access = self.access.withLockedValue { access -> AccessControl in
            access.defaultPolicy = policy
            access.defaultReversePolicy = reversePolicy
            access.allowedOrigins = allowedOrigins
            return access
        }
        apply(access)
    }

    /// Open tunnels under new rules: each session gets its identity's new policies; tunnels whose user is gone or
    /// whose credentials changed are closed.
    private func apply(_ access: AccessControl) {
        for record in sessions.withLockedValue({ Array($0.values) }) {
            let updated: Identity
            if record.identity.method == .none {
                guard access.directory == nil else { continue }
                updated = Identity(name: record.identity.name, method: .none, policy: access.defaultPolicy,
                                   reversePolicy: access.defaultReversePolicy, limits: record.identity.limits,
                                   credentialFingerprint: record.identity.credentialFingerprint)
            } else {
                guard let directory = access.directory else { continue }
                let name = record.identity.name
                let mux = record.mux
                guard let user = directory.user(named: name), user.credentialFingerprint == record.identity.credentialFingerprint else {
                    let why = directory.user(named: name) == nil ? "was removed from the users file" : "has new credentials"
                    logger.notice("user \(name) \(why): closing their tunnel")
                    mux.eventLoop.execute { mux.value.closeTunnel() }
                    continue
                }
                updated = access.identity(user, record.identity.method)
            }
            let session = record.session
            session.eventLoop.execute { session.value.update(policy: updated.policy, reversePolicy: updated.reversePolicy) }
        }
    }

    var routes: [WebSocketRoute] {
        [.tunnel(path: configuration.path, compression: configuration.compression)]
            + configuration.rawRoutes.map {
                WebSocketRoute(path: $0.path, kind: .raw, subprotocols: ["binary"], compression: configuration.compression)
            }
    }

    private func initializeTunnel(_ channel: any Channel, connector: TargetConnector, logger: Logger) throws {
        var logger = logger
        let peer = channel.remoteAddress.flatMap { address in
            address.ipAddress.map { HostPort(host: $0, port: address.port ?? 0) }
        }
        if let peer { logger[metadataKey: "peer"] = "\(peer)" }
        let sessionLogger = logger
        let timeout = configuration.handshakeTimeout
        let metrics = configuration.metrics
        let refusalLog = self.refusalLog
        let onTimeout: @Sendable () -> Void = {
            refusalLog.log(sessionLogger, level: .info,
                           "closing a connection that sent no complete upgrade request within \(timeout.nanoseconds / 1_000_000_000) s")
            metrics?.limitHit("handshake_timeout")
        }
        try channel.pipeline.syncOperations.addHandler(WebSocketServerHandshakeHandler(
            routes: routes, timeout: timeout, logger: logger, onTimeout: onTimeout) {
            [weak self] channel, head, upgrade, admission in
            guard let self else {
                admission.refuse(.serviceUnavailable, "the server is shutting down")
                return
            }
            var peer = peer
            var logger = sessionLogger
            if let proxy = peer, !self.configuration.trustedProxies.isEmpty {
                let (client, forwarded) = self.configuration.trustedProxies.clientAddress(peer: proxy.host, headers: head.headers)
                if forwarded {
                    // Behind a trusted reverse proxy: the client is who the proxy says; the proxy is kept as "via".
                    peer = HostPort(host: client, port: 0)
                    logger[metadataKey: "peer"] = "\(client)"
                    logger[metadataKey: "via"] = "\(proxy)"
                }
            }
            self.admit(channel, head: head, upgrade: upgrade, admission: admission, peer: peer, connector: connector,
                       logger: logger)
        })
    }

    /// Decides who the request is before its 101 (`AccessControl`), checking a password off the event loop, and
    /// installs the session with that identity's rules, or answers 401/403.
    private func admit(_ channel: any Channel, head: HTTPRequestHead, upgrade: WebSocketUpgrade, admission: WebSocketAdmission,
                       peer: HostPort?, connector: TargetConnector, logger: Logger) {
        let access = self.access.withLockedValue { $0 }
        let certificateIdentities = ClientCertificateIdentity.of(channel)
        let decide = { [weak self] (decision: AccessControl.Decision) in
            guard let self else { return }
            switch decision {
            case .admit(let identity):
                let address = peer?.host ?? "?"
                if let (limit, text) = self.sessionCounter.reserve(address: address, user: identity.name,
                                                                   userLimit: identity.limits.sessions) {
                    self.refusalLog.log(logger, "tunnel refused (429): \(text)")
                    self.configuration.metrics?.limitHit("sessions_" + limit)
                    admission.refuse(.tooManyRequests, text)
                    return
                }
                let counter = self.sessionCounter
                channel.closeFuture.whenComplete { _ in counter.release(address: address, user: identity.name) }
                admission.accept { channel in
                    try self.install(channel, head: head, upgrade: upgrade, identity: identity, connector: connector, logger: logger)
                }
            case .refuse(let refusal):
                self.refusalLog.log(logger, "tunnel refused (\(refusal.status.code)): \(refusal.reason)", metadata: [
                    "user_agent": "\(LogText.bounded(head.headers["User-Agent"].first ?? ""))",
                ])
                self.configuration.metrics?.authFailure(refusal.status == .forbidden ? "forbidden" : "unauthorized")
                admission.refuse(refusal.status, refusal.reason, extraHeaders: refusal.headers)
            case .checkPassword:
                preconditionFailure("a password check is decided before this")
            }
        }
        switch access.decide(head, certificateIdentities: certificateIdentities) {
        case .checkPassword(let user, let password):
            let address = peer?.host ?? "?"
            if let wait = passwordFailures.withLockedValue({ $0.blocked(address) }) {
                decide(.refuse(.init(status: .unauthorized,
                                     reason: "too many wrong passwords from \(address); wait \(wait) s before trying again")))
                return
            }
            NIOThreadPool.singleton.runIfActive(eventLoop: channel.eventLoop) { user.password?.verify(password) ?? false }
                .assumeIsolated().whenComplete { [weak self] result in
                    let ok = (try? result.get()) ?? false
                    if !ok { self?.passwordFailures.withLockedValue { $0.failed(address) } }
                    decide(access.passwordChecked(user, ok: ok))
                }
        case let decision:
            decide(decision)
        }
    }

    private func install(_ channel: any Channel, head: HTTPRequestHead, upgrade: WebSocketUpgrade, identity: Identity,
                         connector: TargetConnector, logger: Logger) throws {
        var sessionLogger = logger
        if identity.method != .none { sessionLogger[metadataKey: "user"] = "\(identity.name)" }
        let connector = connector.with(policy: identity.policy)
        if upgrade.route > 0 {
            let route = configuration.rawRoutes[upgrade.route - 1]
            let id = ObjectIdentifier(channel)
            rawBridges.withLockedValue { $0[id] = channel }
            channel.closeFuture.whenComplete { [weak self] _ in
                _ = self?.rawBridges.withLockedValue { $0.removeValue(forKey: id) }
            }
            try RawBridge.installServerSide(on: channel, route: route, upgrade: upgrade, head: head,
                                            configuration: configuration, connector: connector, logger: sessionLogger)
            return
        }
        let mux = configuration.mux
        var wsConfig = WebSocketConnectionHandler.Configuration()
        wsConfig.maxMessageSize = Int(mux.maxReceiveMessageSize)
        wsConfig.deflate = upgrade.deflate
        wsConfig.compression = configuration.compression
        let metrics = configuration.metrics
        var exporter: SessionMetricsExporter? = nil
        let webSocket = WebSocketConnectionHandler(role: .server, configuration: wsConfig, logger: sessionLogger)
        let settings = ServerSession.Settings(connector: connector, reversePolicy: identity.reversePolicy,
                                              channelOptions: configuration.channelOptions,
                                              udpIdleTimeout: configuration.udpIdleTimeout, refusalLog: refusalLog)
        let finalLogger = sessionLogger
        let user = identity.method == .none ? "-" : identity.name
        metrics?.session(user: user, delta: 1)
        let session = ServerSession(settings: settings, logger: sessionLogger) { [weak self] handler in
            metrics?.session(user: user, delta: -1)
            exporter?.close()
            exporter = nil
            if let statistics = webSocket.compressionStatistics {
                finalLogger.info("tunnel compression: \(statistics.summary)")
            }
            guard let self else { return }
            _ = self.sessions.withLockedValue { $0.removeValue(forKey: ObjectIdentifier(handler)) }
        }
        var muxConfiguration = mux
        muxConfiguration.features = [.reverse, .datagrams]
        if let streams = identity.limits.streams { muxConfiguration.maxConcurrentStreams = min(streams, mux.maxConcurrentStreams) }
        let handler = MuxHandler(role: .server, configuration: muxConfiguration, logger: sessionLogger)
        session.attach(handler)
        if let metrics {
            exporter = SessionMetricsExporter(metrics: metrics, session: handler, webSocket: webSocket,
                                              eventLoop: channel.eventLoop)
        }
        let sync = channel.pipeline.syncOperations
        try sync.addHandler(webSocket)
        try sync.addHandler(handler)
        sessions.withLockedValue {
            $0[ObjectIdentifier(handler)] = SessionRecord(mux: NIOLoopBound(handler, eventLoop: channel.eventLoop),
                                                          session: NIOLoopBound(session, eventLoop: channel.eventLoop),
                                                          webSocket: NIOLoopBound(webSocket, eventLoop: channel.eventLoop),
                                                          identity: identity,
                                                          peer: sessionLogger[metadataKey: "peer"].map { "\($0)" } ?? "?",
                                                          openedAt: .now())
        }
        var metadata: Logger.Metadata = [
            "compression": "\(upgrade.deflate?.summary ?? (configuration.compression.mode == .off ? "off" : "none (the client offered none we accept)"))",
        ]
        if identity.method != .none { metadata["auth"] = "\(identity.method.rawValue)" }
        if let agent = head.headers["User-Agent"].first { metadata["user_agent"] = "\(LogText.bounded(agent))" }
        sessionLogger.info("tunnel opened", metadata: metadata)
    }

    /// GOAWAY to every tunnel, then wait for their streams — and for raw bridges — to finish (or the drain
    /// timeout); what is left is closed (raw bridges with 1001, going away).
    func drain() async {
        let all = sessions.withLockedValue { Array($0.values) }
        let raw = rawBridges.withLockedValue { $0.count }
        if !all.isEmpty || raw > 0 {
            logger.notice("shutting down: draining \(all.count) tunnel(s) and \(raw) raw bridge(s), up to \(configuration.drainTimeout.nanoseconds / 1_000_000_000) s")
        }
        for record in all {
            let bound = record.mux
            bound.eventLoop.execute { bound.value.beginDrain(reason: "the server is shutting down") }
        }
        let deadline = NIODeadline.now() + configuration.drainTimeout
        while (sessionCount > 0 || rawBridges.withLockedValue({ !$0.isEmpty })) && NIODeadline.now() < deadline {
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        let left = sessions.withLockedValue { Array($0.values) }
        if !left.isEmpty {
            logger.warning("drain timeout: closing \(left.count) tunnel(s) with streams still open")
            for record in left {
                let bound = record.mux
                bound.eventLoop.execute { bound.value.closeTunnel() }
            }
        }
        let leftRaw = rawBridges.withLockedValue { Array($0.values) }
        if !leftRaw.isEmpty {
            logger.warning("drain timeout: closing \(leftRaw.count) raw bridge(s) (1001, going away)")
            for channel in leftRaw {
                channel.triggerUserOutboundEvent(WebSocketCloseRequest(code: .goingAway, reason: "the server is shutting down"),
                                                 promise: nil)
            }
            // Give the closing handshakes a moment before the event loops stop.
            try? await Task.sleep(nanoseconds: 300_000_000)
        }
    }

    private func shutdownGroup() async throws {
        if ownsGroup { try await group.shutdownGracefully() }
    }
}

/// Why a tunnel connection ended, as a user reads it: NIO's IOError text names its syscall wrapper
/// (`read(descriptor:pointer:size:): Connection reset by peer) (errno: 104)`).
func describeTunnelError(_ error: any Error) -> String {
    if let io = error as? IOError {
        switch io.errnoCode {
        case ECONNRESET: return "the connection was reset by the peer"
        case EPIPE: return "the peer closed the connection while we were writing"
        case ETIMEDOUT: return "the connection timed out"
        default: return String(cString: strerror(io.errnoCode)).lowercased()
        }
    }
    return "\(error)"
}

func describeBindError(_ error: any Error) -> String {
    if let io = error as? IOError {
        switch io.errnoCode {
        case EADDRINUSE: return "the address is already in use (another process listens there)"
        case EADDRNOTAVAIL: return "the address is not available on this machine"
        case EACCES: return "permission denied (ports below 1024 need privileges)"
        default: return "\(io)"
        }
    }
    return "\(error)"
}

// MARK: The admin listener's view

extension AditServer {
    public func isReady() async -> Bool { phase.withLockedValue { $0 == .listening } }

    public func adminStatus() async -> AdminStatus {
        let records = sessions.withLockedValue { Array($0.values) }
        var rows: [AdminStatus.Session] = []
        for record in records {
            let row = try? await record.mux.eventLoop.submit {
                AdminStatus.session(mux: record.mux.value, webSocket: record.webSocket.value,
                                    identity: record.identity.method == .none ? "-" : record.identity.name,
                                    peer: record.peer, openedAt: record.openedAt)
            }.get()
            if let row { rows.append(row) }
        }
        rows.sort { $0.uptimeSeconds > $1.uptimeSeconds }
        let config = configuration
        let address = boundAddress.withLockedValue { $0 }
        let shown = address.map { HostPort(host: $0.ipAddress ?? config.listen.host, port: $0.port ?? 0).description }
            ?? config.listen.description
        var details = ["listening on \(config.tls == nil ? "ws" : "wss")://\(shown)\(config.path)",
                       "targets allowed: \(config.policy.patterns.isEmpty ? "none" : config.policy.description)"]
        if !config.reversePolicy.patterns.isEmpty { details.append("reverse binds allowed: \(config.reversePolicy.description)") }
        if config.usersFile != nil || config.users != nil { details.append("users: \(config.usersFile ?? "configured")") }
        for route in config.rawRoutes { details.append("raw bridge \(route.path) → \(route.target)") }
        let phase = self.phase.withLockedValue { $0 }
        return AdminStatus(role: "server", version: AditVersion.current,
                           uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
                           ready: phase == .listening,
                           state: phase == .listening ? "listening" : phase == .draining ? "draining" : "starting",
                           details: details, sessions: rows)
    }
}
