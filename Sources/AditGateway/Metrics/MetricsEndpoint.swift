import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// Serves `GET /metrics` in the Prometheus text format on its own address (`--metrics HOST:PORT`), apart from
/// the tunnel port so it is never exposed with it. swift-prometheus has no HTTP server of its own.
public final class MetricsEndpoint: BindingService, @unchecked Sendable {
    private let address: HostPort
    private let registry: PrometheusCollectorRegistry
    private let logger: Logger
    private let group: MultiThreadedEventLoopGroup
    private let started: EventLoopPromise<SocketAddress>
    private let channel = NIOLockedValueBox<(any Channel)?>(nil)

    public init(address: HostPort, registry: PrometheusCollectorRegistry, logger: Logger) {
        self.address = address
        self.registry = registry
        self.logger = logger
        self.group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        self.started = group.next().makePromise()
    }

    public var localAddress: EventLoopFuture<SocketAddress> { started.futureResult }

    /// Binds the listener. Called before the process reports itself up, so an address in use is a startup
    /// error (exit 1) rather than a service that fails while the tunnel goes on without it.
    public func bind() async throws {
        guard channel.withLockedValue({ $0 }) == nil else { return }
        let registry = self.registry
        let bound: any Channel
        do {
            bound = try await TunnelChannelOptions.backingOffAccepts(ServerBootstrap(group: group))
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try channel.pipeline.syncOperations.addHandler(MetricsRequestHandler(registry: registry))
                    }
                }
                .bind(host: address.host, port: address.port).get()
        } catch {
            started.fail(error)
            try? await group.shutdownGracefully()
            throw ConfigurationError("cannot serve metrics on \(address): \(describeBindError(error))")
        }
        channel.withLockedValue { $0 = bound }
        started.succeed(bound.localAddress!)
        logger.notice("metrics on http://\(address)/metrics")
    }

    public func run() async throws {
        try await bind()
        guard let channel = channel.withLockedValue({ $0 }) else { return }
        await withTaskCancellationHandler {
            await withGracefulShutdownHandler {
                try? await channel.closeFuture.get()
            } onGracefulShutdown: {
                channel.close(promise: nil)
            }
        } onCancel: {
            channel.close(promise: nil)
        }
        try? await group.shutdownGracefully()
    }
}

final class MetricsRequestHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
            var body: [UInt8] = []
            let status: HTTPResponseStatus
            let contentType: String
            if head.method == .GET && path == "/metrics" {
                registry.emit(into: &body)
                status = .ok
                contentType = "text/plain; version=0.0.4; charset=utf-8"
            } else {
                body = Array("Adit serves Prometheus metrics at GET /metrics.\n".utf8)
                status = .notFound
                contentType = "text/plain; charset=utf-8"
            }
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: contentType)
            headers.add(name: "Content-Length", value: "\(body.count)")
            let keepAlive = head.isKeepAlive
            if !keepAlive { headers.add(name: "Connection", value: "close") }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                          promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                if !keepAlive { channel.close(promise: nil) }
            }
            self.head = nil
        }
    }
}
