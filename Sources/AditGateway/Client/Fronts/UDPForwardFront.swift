import AditMux
import Logging
import NIOCore
import NIOPosix

/// `-L [BIND:]PORT:HOST:HOSTPORT/udp`: a local UDP socket whose every sender gets a datagram stream to the
/// target; replies go back to that sender. A flow ends after `--udp-timeout` of silence.
enum UDPForwardFront {
    /// `opener` is called on the event loop, where the tunnel manager lives.
    static func bind(_ forward: ForwardSpec, opener: @escaping @Sendable () -> any StreamOpener, idleTimeout: TimeAmount, eventLoop: any EventLoop,
                     logger: Logger, onBound: @escaping (any Channel) -> Void) async throws -> SocketAddress {
        let target = forward.target
        let bootstrap = DatagramBootstrap(group: eventLoop)
            .channelOption(.socketOption(.so_reuseaddr), value: 1)
            .channelOption(.socketOption(.so_rcvbuf), value: DatagramFlowTable.socketReceiveBuffer)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
        let channel: any Channel
        do {
            channel = try await bootstrap.bind(host: forward.bind.host, port: forward.bind.port).get()
        } catch {
            throw ConfigurationError("cannot listen on \(forward.bind)/udp for -L \(forward): \(describeBindError(error))")
        }
        // The table joins on the loop: it and the opener are confined to it.
        try await eventLoop.submit {
            let opener = opener()
            try channel.pipeline.syncOperations.addHandler(
                DatagramFlowTable(framing: UDPForwardFront.framing(to: target), idleTimeout: idleTimeout, logger: logger) {
                    request, flow, promise in
                    opener.openStream(request, endpoint: flow, promise: promise)
                })
        }.get()
        onBound(channel)
        return channel.localAddress!
    }

    /// Each sender is a flow to `target`; replies go back to it.
    static func framing(to target: MuxTarget) -> DatagramFlowTable.Framing {
        DatagramFlowTable.Framing(
            inbound: { envelope in
                (.sender(envelope.remoteAddress), envelope.data, MuxOpenRequest(target: target, kind: .datagram))
            },
            outbound: { key, payload in
                guard case .sender(let address) = key else { return nil }
                return AddressedEnvelope(remoteAddress: address, data: payload)
            })
    }
}
