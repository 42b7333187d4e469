import AditMux
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

#if canImport(Glibc)
import Glibc
#endif

/// `adit demo`: a server, a client and an echo target in one process on loopback; pushes data over several
/// streams, verifies every byte, prints the throughput and the commands to run for real.
public struct DemoRunner: Sendable {
    public let streams: Int
    public let totalBytes: Int
    public let logger: Logger

    public init(streams: Int, totalBytes: Int, logger: Logger) {
        self.streams = streams
        self.totalBytes = totalBytes
        self.logger = logger
    }

    public func run() async throws {
        let targets = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        do {
            try await run(targets: targets)
        } catch {
            try? await targets.shutdownGracefully()
            throw error
        }
        try? await targets.shutdownGracefully()
    }

    private func run(targets: MultiThreadedEventLoopGroup) async throws {

        let echo = try await ServerBootstrap(group: targets)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.allowRemoteHalfClosure, value: true)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture { try channel.pipeline.syncOperations.addHandler(EchoHandler()) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        let echoPort = echo.localAddress!.port!

        var serverConfig = AditServer.Configuration(
            listen: HostPort(host: "127.0.0.1", port: 0),
            policy: try TargetPolicy.parse(["127.0.0.1:\(echoPort)"]))
        serverConfig.threads = 1
        serverConfig.drainTimeout = .seconds(5)
        let server = AditServer(configuration: serverConfig, logger: logger)

        let services = ServiceGroup(configuration: .init(
            services: [.init(service: server)], gracefulShutdownSignals: [.sigint, .sigterm],
            logger: Logger(label: "adit.demo.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })))
        async let serverRun: Void = services.run()

        let serverAddress = try await server.localAddress.get()
        let url = try TunnelURL.parse("ws://127.0.0.1:\(serverAddress.port!)/")
        var clientConfig = AditClient.Configuration(
            url: url, forwards: [ForwardSpec(bind: HostPort(host: "127.0.0.1", port: 0),
                                             target: MuxTarget(hostText: "127.0.0.1", port: UInt16(echoPort)))])
        clientConfig.drainTimeout = .seconds(5)
        let client = try AditClient(configuration: clientConfig, logger: logger)
        let clientServices = ServiceGroup(configuration: .init(
            services: [.init(service: client)], gracefulShutdownSignals: [.sigint, .sigterm],
            logger: Logger(label: "adit.demo.lifecycle", factory: { _ in SwiftLogNoOpLogHandler() })))
        async let clientRun: Void = clientServices.run()
        let localPort = try await client.localAddresses.get()[0].port!

        print("adit demo: server on ws://127.0.0.1:\(serverAddress.port!)/, client forwarding 127.0.0.1:\(localPort) "
              + "to an echo target on 127.0.0.1:\(echoPort)")
        print("pushing \(totalBytes >> 20) MiB each way over \(streams) streams of one tunnel, verifying every byte…")

        var pattern = ByteBufferAllocator().buffer(capacity: 1 << 20 + 7)
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<((1 << 20 + 7) / 8) { pattern.writeInteger(rng.next() as UInt64) }
        let perStream = totalBytes / streams
        let progress = NIOLockedValueBox([Int](repeating: 0, count: streams))
        let start = NIODeadline.now()
        var futures: [EventLoopFuture<Void>] = []
        for slot in 0..<streams {
            let done = targets.next().makePromise(of: Void.self)
            let bytes = slot == streams - 1 ? totalBytes - perStream * (streams - 1) : perStream
            let patternCopy = pattern
            futures.append(done.futureResult)
            ClientBootstrap(group: targets)
                .channelOption(.allowRemoteHalfClosure, value: true)
                .channelOption(.tcpOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(
                            DemoLoadHandler(pattern: patternCopy, total: bytes, progress: progress, slot: slot, done: done))
                    }
                }
                .connect(host: "127.0.0.1", port: localPort)
                .whenFailure { done.fail($0) }
        }
        let all = EventLoopFuture.andAllSucceed(futures, on: targets.next())
        let complete = NIOLockedValueBox(false)
        all.whenComplete { _ in complete.withLockedValue { $0 = true } }
        let isTTY = isatty(1) != 0
        var lastPrint = NIODeadline.now()
        while true {
            try await Task.sleep(nanoseconds: 100_000_000)
            let finished = complete.withLockedValue { $0 }
            let now = NIODeadline.now()
            if now - lastPrint >= .milliseconds(isTTY ? 250 : 2000) || finished {
                lastPrint = now
                let got = progress.withLockedValue { $0.reduce(0, +) }
                let secs = Double((now - start).nanoseconds) / 1e9
                let line = String(format: "  %5d / %d MiB echoed   %7.1f MiB/s each way", got >> 20, totalBytes >> 20,
                                  Double(got) / 1048576 / max(secs, 0.001))
                if isTTY { print("\r\(line)", terminator: "") } else { print(line) }
                fflush(nil)
            }
            if finished { break }
        }
        if isTTY { print("") }
        let outcome: Result<Void, any Error>
        do {
            try await all.get()
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        let elapsed = Double((NIODeadline.now() - start).nanoseconds) / 1e9
        await clientServices.triggerGracefulShutdown()
        await services.triggerGracefulShutdown()
        try? await clientRun
        try? await serverRun
        try? await echo.close()
        if case .failure(let error) = outcome { throw error }

        let mbps = Double(totalBytes) / elapsed / 1048576
        print(String(format: "done: %d MiB each way in %.2f s — %.0f MiB/s each way (%.2f Gbit/s both ways together), every byte verified",
                     totalBytes >> 20, elapsed, mbps, Double(totalBytes) * 2 * 8 / elapsed / 1e9))
        print("""

            Run it for real, in two terminals:
              on the gateway:  adit server --listen 0.0.0.0:8080 --allow 'localhost:22'
              on your laptop:  adit client ws://GATEWAY:8080/ -L 2222:localhost:22
            then `ssh -p 2222 you@127.0.0.1` reaches the gateway's sshd through the tunnel.
            """)
    }
}
