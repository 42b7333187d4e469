import Foundation
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Prometheus
import ServiceLifecycle

/// `--admin HOST:PORT`: the operator's HTTP listener, apart from the tunnel port so it is never exposed with it.
/// `/healthz` (the process answers), `/readyz` (ready for traffic: the server listens and does not drain, the
/// client's tunnel is up), `/metrics` (Prometheus, with `# HELP`), `/status` (a live HTML page) and
/// `/status.json` (what the page shows). Hummingbird serves it: routing, HTTP/1.1 keep-alive and graceful
/// shutdown come from a well-kept server rather than a hand-written one.
///
/// It shuts down after the program's main service (see `runService`), so `/readyz` says 503 all through a drain.
public final class AdminEndpoint: BindingService, @unchecked Sendable {
    private let address: HostPort
    private let registry: PrometheusCollectorRegistry?
    private weak var source: (any AdminStatusSource)?
    private let logger: Logger
    /// Hummingbird binds inside `run()`; this opens once it serves (or once `run()` has ended) for `serving()`.
    private let servingGate = NIOLockedValueBox<(open: Bool, waiters: [CheckedContinuation<Void, Never>])>((false, []))

    public init(address: HostPort, registry: PrometheusCollectorRegistry?, logger: Logger) {
        self.address = address
        self.registry = registry
        self.logger = logger
    }

    public func serving() async {
        await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
            let open = servingGate.withLockedValue { gate in
                if !gate.open { gate.waiters.append(waiter) }
                return gate.open
            }
            if open { waiter.resume() }
        }
    }

    private func openServingGate() {
        let waiters = servingGate.withLockedValue { gate in
            defer { gate = (true, []) }
            return gate.waiters
        }
        waiters.forEach { $0.resume() }
    }

    /// The program to report on; set before `run()`.
    public func report(on source: any AdminStatusSource) {
        self.source = source
    }

    /// Checks the address is free before the program reports itself up, so an address in use is a startup
    /// error (exit 1). Hummingbird binds only in `run()`; a probe socket closed at once leaves the port to it.
    public func bind() async throws {
        do {
            let probe = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .bind(host: address.host, port: address.port).get()
            try await probe.close()
        } catch {
            throw ConfigurationError("cannot serve the admin listener on \(address): \(describeBindError(error))")
        }
    }

    public func run() async throws {
        defer { openServingGate() }
        let router = Router()
        router.get("/healthz") { _, _ in Self.text("ok\n") }
        router.get("/readyz") { [weak self] _, _ in
            let ready = await self?.source?.isReady() ?? false
            return Self.text(ready ? "ready\n" : "not ready\n", status: ready ? .ok : .serviceUnavailable)
        }
        router.get("/metrics") { [registry] _, _ in
            guard let registry else {
                return Self.text("metrics are collected only with --metrics or --admin\n", status: .notFound)
            }
            var body: [UInt8] = []
            registry.emit(into: &body)
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                            body: .init(byteBuffer: ByteBuffer(bytes: MetricsHelp.annotate(body))))
        }
        router.get("/status") { _, _ in
            Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
                     body: .init(byteBuffer: ByteBuffer(string: StatusPage.html)))
        }
        router.get("/status.json") { [weak self] _, _ in
            guard let source = self?.source else { return Self.text("not started\n", status: .serviceUnavailable) }
            let status = await source.adminStatus()
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            let data = try encoder.encode(status)
            return Response(status: .ok, headers: [.contentType: "application/json", .cacheControl: "no-store"],
                            body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        var quiet = logger
        quiet.logLevel = max(logger.logLevel, .warning)  // its own "server started" and per-request lines
        let address = self.address
        let logger = self.logger
        let app = Application(
            router: router,
            configuration: .init(address: .hostname(address.host, port: address.port), serverName: nil),
            onServerRunning: { channel in
                let shown = channel.localAddress.map { HostPort(host: $0.ipAddress ?? address.host, port: $0.port ?? 0) } ?? address
                // Hummingbird's listener has no accept back-off: out of descriptors it spun at 62 % of a core
                // (test_gauntlet). The same pause as every other listener, first in its server pipeline.
                try? await channel.eventLoop.submit {
                    try channel.pipeline.syncOperations.addHandler(
                        AcceptPauseHandler(logger: Logger(label: "adit.listener")), position: .first)
                }.get()
                logger.notice("admin listener on http://\(shown)/ (/healthz, /readyz, /metrics, /status)")
                self.openServingGate()
            },
            logger: quiet)
        try await app.run()
    }

    static func text(_ text: String, status: HTTPResponse.Status = .ok) -> Response {
        Response(status: status, headers: [.contentType: "text/plain; charset=utf-8"],
                 body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}
