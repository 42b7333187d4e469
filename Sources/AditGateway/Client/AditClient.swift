import AditMux
import AditWebSocket
import NIOSSL
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle

/// `adit client`: listens on local ports and carries every connection as a stream of one tunnel.
public final class AditClient: Service, @unchecked Sendable {
    public struct Configuration: Sendable {
        public var url: TunnelURL
        public var forwards: [ForwardSpec]
        public var hostHeader: String?
        public var origin: String?
        public var extraHeaders: [(String, String)] = []
        public var mux = MuxConfiguration()
        public var channelOptions = TunnelChannelOptions()
        public var connectTimeout: TimeAmount = .seconds(10)
        /// How long a local connection may wait for the tunnel before it is closed.
        public var pendingTimeout: TimeAmount = .seconds(15)
        public var reconnectMinimum: TimeAmount = .milliseconds(500)
        public var reconnectMaximum: TimeAmount = .seconds(15)
        public var drainTimeout: TimeAmount = .seconds(30)
        /// Where session totals go; nil exports nothing.
        public var metrics: TunnelMetrics?
        /// permessage-deflate offer and use.
        public var compression = CompressionSettings()
        /// `--raw`: these local listeners carry each connection over its own WebSocket to `url`, unmultiplexed
        /// (websockify-compatible), instead of `forwards` over one tunnel.
        public var rawListeners: [HostPort] = []
        /// Largest message accepted on a raw WebSocket (after inflating).
        public var rawMaxMessageSize = 16 << 20
        /// The proxy between us and the server; nil goes direct.
        public var proxy: ProxyRoute?
        /// `User-Agent` of the upgrade request and of CONNECT.
        public var userAgent: String?
        /// For wss://: trust, pins, client certificate. `prepareTLS()` builds the context from it.
        public var tls = ClientTLSSettings()
        private(set) var tlsContext: NIOSSLContext?
        /// TLS to an https:// proxy: the system's roots plus `tls.caFile`, the proxy's own name checked.
        private(set) var proxyTLSContext: NIOSSLContext?

        /// Loads the certificates and keys named in `tls` (once; the contexts serve every connection). Call
        /// after setting `url`, `tls` and `proxy`.
        public mutating func prepareTLS() throws(ConfigurationError) {
            tlsContext = url.secure ? try tls.makeContext(host: tls.serverName ?? url.host) : nil
            let httpsHop = proxy.map { [$0.url] + $0.next.map(\.url) }?.contains { $0.kind == .https } ?? false
            proxyTLSContext = httpsHop ? try tls.makeProxyContext() : nil
        }

        public init(url: TunnelURL, forwards: [ForwardSpec]) {
            self.url = url
            self.forwards = forwards
        }

        /// How the tunnel (or each raw WebSocket) is dialled.
        var dialer: WebSocketDialer {
            var dialer = WebSocketDialer(url: url, hostHeader: hostHeader, origin: origin, extraHeaders: extraHeaders,
                                         compression: compression, channelOptions: channelOptions,
                                         connectTimeout: connectTimeout)
            dialer.proxy = proxy
            dialer.userAgent = userAgent
            if let tlsContext { dialer.tls = (tlsContext, tls) }
            dialer.proxyTLS = proxyTLSContext
            if !rawListeners.isEmpty {
                // As websockify expects: `binary` alone (it only accepts it as the first token), or none back.
                dialer.webSocket.subprotocols = ["binary"]
                dialer.webSocket.requiresSubprotocol = false
            }
            return dialer
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

    /// One event loop carries the tunnel and all its local connections: a single core does the relaying,
    /// with no cross-thread hand-offs on the data path.
    public init(configuration: Configuration, logger: Logger, group: MultiThreadedEventLoopGroup? = nil) {
        var configuration = configuration
        if configuration.url.secure && configuration.tlsContext == nil {
            // Callers that did not prepare: default trust. Errors surface at the first dial.
            try? configuration.prepareTLS()
        }
        self.configuration = configuration
        self.logger = logger
        self.group = group ?? MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.ownsGroup = group == nil
        self.eventLoop = self.group.next()
        self.manager = NIOLoopBoundBox.makeBoxSendingValue(
            TunnelManager(configuration: configuration, eventLoop: eventLoop, logger: logger), eventLoop: eventLoop)
        self.started = eventLoop.makePromise()
    }

    /// The local addresses of the listeners, in the order of the forwards (port 0 resolved).
    public var localAddresses: EventLoopFuture<[SocketAddress]> { started.futureResult }

    public func run() async throws {
        do {
            try await start()
        } catch {
            started.fail(error)
            try? await shutdownGroup()
            throw error
        }
        await withGracefulShutdownHandler {
            for listener in self.listeners { try? await listener.closeFuture.get() }
        } onGracefulShutdown: {
            for listener in self.listeners { listener.close(promise: nil) }
        }
        await stop()
        try? await shutdownGroup()
    }

    func start() async throws {
        if !configuration.rawListeners.isEmpty {
            try await startRaw()
            return
        }
        var addresses: [SocketAddress] = []
        let manager = self.manager
        for forward in configuration.forwards {
            let target = forward.target
            let address = try await listen(on: forward.bind, what: "-L \(forward)") { channel in
                manager.value.handle(connection: channel, target: target)
            }
            addresses.append(address)
            logger.notice("forwarding \(HostPort(host: address.ipAddress ?? forward.bind.host, port: address.port ?? 0)) -> \(forward.target) via \(configuration.url)")
        }
        started.succeed(addresses)
        eventLoop.execute { manager.value.start() }
    }

    /// `--raw`: every local connection gets its own WebSocket; there is no tunnel to keep up.
    private func startRaw() async throws {
        var addresses: [SocketAddress] = []
        let dialer = configuration.dialer
        let logger = self.logger
        let maxMessageSize = configuration.rawMaxMessageSize
        let compression = configuration.compression
        for bind in configuration.rawListeners {
            let address = try await listen(on: bind, what: "-L") { channel in
                RawBridge.bridgeLocalConnection(channel, dialer: dialer, maxMessageSize: maxMessageSize,
                                                compression: compression, logger: logger)
            }
            addresses.append(address)
            logger.notice("forwarding \(HostPort(host: address.ipAddress ?? bind.host, port: address.port ?? 0)) over raw WebSockets to \(configuration.url) (compression \(compression.mode.rawValue))")
        }
        started.succeed(addresses)
    }

    /// Binds one local listener whose accepted connections go to `onConnection` once active; on failure the
    /// listeners bound so far are closed and the error names `what` was being listened for.
    private func listen(on bind: HostPort, what: String,
                        onConnection: @escaping @Sendable (any Channel) -> Void) async throws -> SocketAddress {
        let bootstrap = configuration.channelOptions.apply(toEndpointListener: ServerBootstrap(group: eventLoop))
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(AcceptedConnectionHandler(onActive: onConnection))
                }
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
