import Logging
import NIOCore
import NIOPosix

/// Socket options for the two kinds of connection Adit handles, chosen by measurement (docs/benchmarks.md).
public struct TunnelChannelOptions: Sendable {
    /// Tunnel (WebSocket) connections: big reads, a small buffer above the socket so the fair scheduler keeps
    /// control of what goes out next.
    public var tunnelReadBufferMax = 256 << 10
    /// Reads per readiness event, on tunnel and endpoint sockets alike: everything read in one event is
    /// processed before the loop serves any other socket, so this bounds how long a bulk transfer keeps the
    /// loop from a small request. Measured: with NIO's default of 4 (up to 1 MiB per event), the reply leg of
    /// a ping-pong beside a bulk stream took p50 0.8 ms / p99 2.6 ms inside adit; with 1, 0.3 / 0.9 ms, at the
    /// same throughput.
    public var readsPerEvent: UInt = 1
    public var tunnelWriteLowWater = 64 << 10
    public var tunnelWriteHighWater = 256 << 10
    /// SO_RCVBUF/SO_SNDBUF of the tunnel socket; nil leaves the kernel's autotuning in charge.
    public var tunnelSocketBuffer: Int? = nil
    /// Stream endpoints (local apps, targets). Reads start small — NIO keeps each channel's last receive
    /// buffer, so an idle stream would otherwise hold 16 KiB — and grow within two full reads to 256 KiB
    /// (measured: ~15% more single-stream throughput than 64 KiB). The price: a stream that once ran at full
    /// speed keeps its 256 KiB buffer while it stays open, since NIO's per-channel pool never shrinks it.
    public var endpointReadBufferMax = 256 << 10

    public init() {}

    /// When accept fails (EMFILE: the descriptors are used up), the listener pauses instead of spinning
    /// (`AcceptPauseHandler`).
    static func backingOffAccepts(_ bootstrap: ServerBootstrap) -> ServerBootstrap {
        bootstrap.serverChannelInitializer { channel in
            channel.eventLoop.makeCompletedFuture {
                try channel.pipeline.syncOperations.addHandler(AcceptPauseHandler(logger: Logger(label: "adit.listener")))
            }
        }
    }

    /// Sets a stream endpoint's options (local apps, targets) from its channel initializer, through the channel's
    /// synchronous options. Written by hand instead of the bootstraps' `channelOption`/`childChannelOption`: those
    /// are applied one future per option through existentials and dynamic casts, which callgrind counted at about
    /// 55,000 instructions per accepted or connected stream on each side, a quarter of all a stream costs.
    func configureEndpoint(_ channel: any Channel) throws {
        // Every socket channel has them; a channel without would silently lose TCP_NODELAY and read on its own.
        guard let options = channel.syncOptions else { throw ChannelError.operationUnsupported }
        try options.setOption(.tcpOption(.tcp_nodelay), value: 1)
        try options.setOption(.autoRead, value: false)
        try options.setOption(.allowRemoteHalfClosure, value: true)
        try options.setOption(.maxMessagesPerRead, value: readsPerEvent)
        try options.setOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 512, initial: 2048,
                                                                                   maximum: endpointReadBufferMax))
    }

    /// A connection to a target: `initializer` runs once the endpoint options are set.
    func apply(toEndpoint bootstrap: ClientBootstrap,
               initializer: @escaping @Sendable (any Channel) throws -> Void = { _ in }) -> ClientBootstrap {
        bootstrap.channelInitializer { [self] channel in
            channel.eventLoop.makeCompletedFuture {
                try configureEndpoint(channel)
                try initializer(channel)
            }
        }
    }

    /// A listener for local applications: `childInitializer` runs on each accepted connection once the endpoint
    /// options are set.
    func apply(toEndpointListener bootstrap: ServerBootstrap,
               childInitializer: @escaping @Sendable (any Channel) throws -> Void) -> ServerBootstrap {
        Self.backingOffAccepts(bootstrap)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 1024)
            .childChannelInitializer { [self] channel in
                channel.eventLoop.makeCompletedFuture {
                    try configureEndpoint(channel)
                    try childInitializer(channel)
                }
            }
    }

    func apply(toTunnel bootstrap: ClientBootstrap) -> ClientBootstrap {
        var bootstrap = bootstrap
        if let size = tunnelSocketBuffer {
            bootstrap = bootstrap.channelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(size))
                .channelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(size))
        }
        return bootstrap
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 << 10,
                                                                                   maximum: tunnelReadBufferMax))
            .channelOption(.writeBufferWaterMark, value: .init(low: tunnelWriteLowWater, high: tunnelWriteHighWater))
            .channelOption(.maxMessagesPerRead, value: readsPerEvent)
    }

    func apply(toTunnelListener bootstrap: ServerBootstrap) -> ServerBootstrap {
        var bootstrap = bootstrap
        if let size = tunnelSocketBuffer {
            // Set on the listener so accepted sockets inherit it before the handshake fixes the window scale.
            bootstrap = bootstrap.serverChannelOption(.socketOption(.so_rcvbuf), value: SocketOptionValue(size))
                .childChannelOption(.socketOption(.so_sndbuf), value: SocketOptionValue(size))
        }
        return Self.backingOffAccepts(bootstrap)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .serverChannelOption(.backlog, value: 256)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: AdaptiveRecvByteBufferAllocator(minimum: 1024, initial: 64 << 10,
                                                                                        maximum: tunnelReadBufferMax))
            .childChannelOption(.writeBufferWaterMark, value: .init(low: tunnelWriteLowWater, high: tunnelWriteHighWater))
            .childChannelOption(.maxMessagesPerRead, value: readsPerEvent)
    }
}
