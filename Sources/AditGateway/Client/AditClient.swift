import AditMux
import AditWebSocket
import NIOSSL
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// `adit client`: takes local connections in every way a user needs (the fronts: `-L`, `-D`, `--http-proxy`,
/// `--stdio`, UDP) and carries each as a stream of one tunnel; asks the server to listen for `-R` and carries
/// those connections back.
public final class AditClient: Service, @unchecked Sendable {
    public struct Configuration: Sendable {
        /// The servers, in order of preference: the client fails over to the next when one cannot be reached.
        public var servers: [TunnelURL]
        /// `-L`: fixed-target forwards, TCP or UDP.
        public var forwards: [ForwardSpec]
        /// `-R`: the server listens, connections come back here.
        public var reverseForwards: [ReverseForwardSpec] = []
        /// `-D`: SOCKS5 (and SOCKS4a) listeners; the client's application names the target.
        public var socksListeners: [HostPort] = []
        /// `--http-proxy`: local HTTP proxies (CONNECT and absolute-form requests).
        public var httpProxyListeners: [HostPort] = []
        /// `--stdio HOST:PORT`: one stream on standard input and output (ssh's ProxyCommand).
        public var stdioTarget: MuxTarget?
        /// Credentials the local SOCKS and HTTP-proxy listeners ask for; nil asks for none.
        public var localCredentials: LocalCredentials?
        public var hostHeader: String?
        public var origin: String?
        public var extraHeaders: [(String, String)] = []
        public var mux = MuxConfiguration()
        public var channelOptions = TunnelChannelOptions()
        public var connectTimeout: TimeAmount = .seconds(10)
        /// How long a local connection may wait for the tunnel before it is refused in its protocol's terms.
        public var waitForTunnel: TimeAmount = .seconds(10)
        /// A UDP flow (one local sender) with no datagram either way for this long is closed.
        public var udpIdleTimeout: TimeAmount = .seconds(60)
        public var reconnectMinimum: TimeAmount = .milliseconds(500)
        public var reconnectMaximum: TimeAmount = .seconds(15)
        public var drainTimeout: TimeAmount = .seconds(30)
        /// Where session totals go; nil exports nothing.
        public var metrics: TunnelMetrics?
        /// permessage-deflate offer and use.
        public var compression = CompressionSettings()
        /// `--raw`: these local listeners carry each connection over its own WebSocket to the first server,
        /// unmultiplexed (websockify-compatible), instead of `forwards` over one tunnel.
        public var rawListeners: [HostPort] = []
        /// Largest message accepted on a raw WebSocket (after inflating).
        public var rawMaxMessageSize = 16 << 20
        /// The proxy between us and the servers; nil goes direct.
        public var proxy: ProxyRoute?
        /// `User-Agent` of the upgrade request and of CONNECT.
        public var userAgent: String?
        /// For wss://: trust, pins, client certificate. `prepareTLS()` builds the contexts from it.
        public var tls = ClientTLSSettings()
        private(set) var tlsContexts: [String: NIOSSLContext] = [:]
        /// TLS to an https:// proxy: the system's roots plus `tls.caFile`, the proxy's own name checked.
        private(set) var proxyTLSContext: NIOSSLContext?
        fileprivate var tlsPrepared = false

        /// The first server (the one `--raw` uses).
        public var url: TunnelURL {
            get { servers[0] }
            set { servers[0] = newValue }
        }

        /// Loads the certificates and keys named in `tls` (once; the contexts serve every connection). Call
        /// after setting `servers`, `tls` and `proxy`; `AditClient.init` calls it when it was not.
        public mutating func prepareTLS() throws(ConfigurationError) {
            tlsContexts = [:]
            for server in servers where server.secure {
                let host = tls.serverName ?? server.host
                if tlsContexts[host] == nil { tlsContexts[host] = try tls.makeContext(host: host) }
            }
            let httpsHop = proxy.map { [$0.url] + $0.next.map(\.url) }?.contains { $0.kind == .https } ?? false
            proxyTLSContext = httpsHop ? try tls.makeProxyContext() : nil
            tlsPrepared = true
        }

        public init(url: TunnelURL, forwards: [ForwardSpec]) {
            self.servers = [url]
            self.forwards = forwards
        }

        /// How the tunnel to `servers[server]` (or each raw WebSocket, to the first) is dialled.
        func dialer(server: Int = 0) -> WebSocketDialer {
            let url = servers[server]
            var dialer = WebSocketDialer(url: url, hostHeader: hostHeader, origin: origin, extraHeaders: extraHeaders,
                                         compression: compression, channelOptions: channelOptions,
                                         connectTimeout: connectTimeout)
            dialer.proxy = proxy
            dialer.userAgent = userAgent
            if url.secure, let context = tlsContexts[tls.serverName ?? url.host] { dialer.tls = (context, tls) }
            dialer.proxyTLS = proxyTLSContext
            if !rawListeners.isEmpty {
                // As websockify expects: `binary` alone (it only accepts it as the first token), or none back.
                dialer.webSocket.subprotocols = ["binary"]
                dialer.webSocket.requiresSubprotocol = false
            }
            return dialer
        }

        var hasTunnelFronts: Bool {
            !forwards.isEmpty || !reverseForwards.isEmpty || !socksListeners.isEmpty || !httpProxyListeners.isEmpty
                || stdioTarget != nil
        }
    }

    public let configuration: Configuration
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let ownsGroup: Bool
    private let eventLoop: any EventLoop
    private let manager: NIOLoopBoundBox<TunnelManager>
    private var listeners: [any Channel] = []
    private let started: EventLoopPromise<[SocketAddress]>
    /// With `--stdio`: completes when its one stream ended, with how it ended.
    private var stdio: StdioFront?
    private let startedAt = NIODeadline.now()

    /// One event loop carries the tunnel and all its local connections: a single core does the relaying,
    /// with no cross-thread hand-offs on the data path. Fails when a TLS file cannot be loaded: a wss:// client
    /// never falls back to anything less.
    public init(configuration: Configuration, logger: Logger, group: MultiThreadedEventLoopGroup? = nil)
        throws(ConfigurationError)
    {
        var configuration = configuration
        guard !configuration.servers.isEmpty else { throw ConfigurationError("no server URL given") }
        if !configuration.tlsPrepared { try configuration.prepareTLS() }
        self.configuration = configuration
        self.logger = logger
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.ownsGroup = group == nil
        self.eventLoop = self.group.next()
        let manager = TunnelManager(configuration: configuration, eventLoop: eventLoop, logger: logger)
        if !configuration.reverseForwards.isEmpty {
            manager.reverseForwards = ReverseForwards(specs: configuration.reverseForwards, configuration: configuration,
                                                      eventLoop: eventLoop, logger: logger)
        }
        self.manager = NIOLoopBoundBox.makeBoxSendingValue(manager, eventLoop: eventLoop)
        self.started = eventLoop.makePromise()
    }

    /// The local addresses of the listeners, in the order of the forwards, then `-D`, then `--http-proxy`
    /// (port 0 resolved).
    public var localAddresses: EventLoopFuture<[SocketAddress]> { started.futureResult }

    /// With `--stdio`, how its stream ended: nil for a clean end, else the one sentence to print.
    public private(set) var stdioFailure: String?

    public func run() async throws {
        do {
            try await start()
        } catch {
            started.fail(error)
            try? await shutdownGroup()
            throw error
        }
        let manager = self.manager
        let gaveUp = try await eventLoop.submit { manager.value.gaveUp.futureResult }.get()
        var failure: String?
        await withGracefulShutdownHandler {
            // Until SIGTERM/SIGINT (a client with only -R or UDP has no TCP listener to wait on), the end of
            // --stdio's stream, or a dial failure that retrying cannot fix.
            failure = await withTaskGroup(of: String?.self) { group in
                group.addTask { ((try? await gaveUp.get()) ?? nil).map { "cannot use the tunnel server: \($0)" } }
                if let stdio = self.stdio {
                    group.addTask {
                        self.stdioFailure = await stdio.finished()
                        return nil
                    }
                } else {
                    group.addTask {
                        try? await gracefulShutdown()
                        return nil
                    }
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                self.eventLoop.execute { manager.value.stopWaitingForFailure() }
                return first
            }
        } onGracefulShutdown: {
            self.eventLoop.execute { manager.value.stopWaitingForFailure() }
            for listener in self.listeners { listener.close(promise: nil) }
            self.stdio?.cancel()
        }
        for listener in listeners { try? await listener.close() }
        await stop()
        try? await shutdownGroup()
        if let failure {
            if stdio != nil && stdioFailure == nil { stdioFailure = failure }
            throw ReportedFailure(failure)
        }
    }

    func start() async throws {
        if !configuration.rawListeners.isEmpty {
            try await startRaw()
            return
        }
        var addresses: [SocketAddress] = []
        // Every front runs on the tunnel's event loop: they reach the manager through its loop-bound box.
        let manager = self.manager
        let opener: @Sendable () -> any StreamOpener = { manager.value }
        let logger = self.logger
        let via = configuration.servers.map(\.description).joined(separator: ", ")
        for forward in configuration.forwards {
            let target = forward.target
            let address: SocketAddress
            if forward.kind == .datagram {
                address = try await UDPForwardFront.bind(forward, opener: opener, idleTimeout: configuration.udpIdleTimeout,
                                                         eventLoop: eventLoop, logger: logger) { [self] channel in
                    self.listeners.append(channel)
                }
            } else {
                address = try await listen(on: forward.bind, what: "-L \(forward)") { channel in
                    ForwardFront.forward(channel, to: target, opener: manager.value, logger: logger)
                }
            }
            addresses.append(address)
            let udp = forward.kind == .datagram ? "/udp" : ""
            logger.notice("forwarding \(Self.shown(address, forward.bind))\(udp) -> \(target)\(udp) via \(via)")
        }
        let credentials = configuration.localCredentials
        let udpIdle = configuration.udpIdleTimeout
        for bind in configuration.socksListeners {
            let address = try await listen(on: bind, what: "-D \(bind)") { channel in
                SOCKSFront.serve(channel, opener: manager.value, credentials: credentials, udpIdleTimeout: udpIdle, logger: logger)
            }
            addresses.append(address)
            logger.notice("SOCKS5/SOCKS4a proxy on \(Self.shown(address, bind)) via \(via)\(credentials == nil ? "" : " (username and password required)")")
        }
        for bind in configuration.httpProxyListeners {
            let address = try await listen(on: bind, what: "--http-proxy \(bind)") { channel in
                HTTPProxyFront.serve(channel, opener: manager.value, credentials: credentials, logger: logger)
            }
            addresses.append(address)
            logger.notice("HTTP proxy on \(Self.shown(address, bind)) via \(via)\(credentials == nil ? "" : " (Basic authentication required)")")
        }
        if let target = configuration.stdioTarget {
            stdio = try await StdioFront.start(target: target, opener: opener, eventLoop: eventLoop, logger: logger)
        }
        started.succeed(addresses)
        eventLoop.execute { manager.value.start() }
    }

    static func shown(_ address: SocketAddress, _ bind: HostPort) -> HostPort {
        HostPort(host: address.ipAddress ?? bind.host, port: address.port ?? 0)
    }

    /// `--raw`: every local connection gets its own WebSocket; there is no tunnel to keep up.
    private func startRaw() async throws {
        var addresses: [SocketAddress] = []
        let dialer = configuration.dialer()
        let logger = self.logger
        let maxMessageSize = configuration.rawMaxMessageSize
        let compression = configuration.compression
        for bind in configuration.rawListeners {
            let address = try await listen(on: bind, what: "-L") { channel in
                RawBridge.bridgeLocalConnection(channel, dialer: dialer, maxMessageSize: maxMessageSize,
                                                compression: compression, logger: logger)
            }
            addresses.append(address)
            logger.notice("forwarding \(Self.shown(address, bind)) over raw WebSockets to \(configuration.url) (compression \(compression.mode.rawValue))")
        }
        started.succeed(addresses)
    }

    /// Binds one local listener whose accepted connections go to `onConnection` once active; on failure the
    /// listeners bound so far are closed and the error names what was being listened for.
    private func listen(on bind: HostPort, what: String,
                        onConnection: @escaping @Sendable (any Channel) -> Void) async throws -> SocketAddress {
        let bootstrap = configuration.channelOptions.apply(toEndpointListener: ServerBootstrap(group: eventLoop)) { channel in
            try channel.pipeline.syncOperations.addHandler(AcceptedConnectionHandler(onActive: onConnection))
        }
        let listener: any Channel
        do {
            listener = try await bootstrap.bind(host: bind.host, port: bind.port).get()
        } catch {
            for l in listeners { try? await l.close() }
            throw ConfigurationError("cannot listen on \(bind) for \(what): \(describeBindError(error))")
        }
        listeners.append(listener)
        return listener.localAddress!
    }

    private func stop() async {
        guard configuration.rawListeners.isEmpty else { return }
        let manager = self.manager
        try? await eventLoop.submit { manager.value.stop() }.get()
        let deadline = NIODeadline.now() + configuration.drainTimeout
        while NIODeadline.now() < deadline {
            let open = (try? await eventLoop.submit { manager.value.hasOpenSessions }.get()) ?? false
            if !open { break }
            try? await Task.sleep(nanoseconds: 50_000_000)
        }
        try? await eventLoop.submit { manager.value.closeAll() }.get()
    }

    private func shutdownGroup() async throws {
        if ownsGroup { try await group.shutdownGracefully() }
    }
}

/// The username and password the local SOCKS5 and HTTP-proxy listeners require (RFC 1929, Basic).
public struct LocalCredentials: Sendable, Equatable {
    public var user: String
    public var password: String

    public init(user: String, password: String) {
        self.user = user
        self.password = password
    }

    /// Constant-time comparison: how long it takes does not tell how much of a guess was right.
    package func matches(user: String, password: String) -> Bool {
        let userMatches = constantTimeEquals(Array(user.utf8), Array(self.user.utf8))
        let passwordMatches = constantTimeEquals(Array(password.utf8), Array(self.password.utf8))
        return userMatches && passwordMatches
    }
}

// MARK: The admin listener's view

extension AditClient: AdminStatusSource {
    public func isReady() async -> Bool {
        let manager = self.manager
        return (try? await eventLoop.submit { manager.value.isTunnelReady }.get()) ?? false
    }

    public func adminStatus() async -> AdminStatus {
        let manager = self.manager
        let startedAt = self.startedAt
        let (state, rows) = (try? await eventLoop.submit { () -> (String, [AdminStatus.Session]) in
            let m = manager.value
            return (m.stateSummary, m.sessionStatus())
        }.get()) ?? ("stopped", [])
        let config = configuration
        var details: [String] = ["servers: " + config.servers.map(\.description).joined(separator: ", ")]
        details += config.forwards.map { "-L \($0)" }
        details += config.reverseForwards.map { "-R \($0)" }
        details += config.socksListeners.map { "-D \($0) (SOCKS5)" }
        details += config.httpProxyListeners.map { "--http-proxy \($0)" }
        if let target = config.stdioTarget { details.append("--stdio \(target)") }
        return AdminStatus(role: "client", version: AditVersion.current,
                           uptimeSeconds: Double((NIODeadline.now() - startedAt).nanoseconds) / 1e9,
                           ready: state == "tunnel up", state: state, details: details, sessions: rows)
    }
}
