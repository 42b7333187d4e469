import AditMux
import Logging
import NIOCore
import NIOPosix

/// The UDP side of a SOCKS5 UDP ASSOCIATE: one local UDP socket, accepting datagrams only from the client's
/// address, each destination a datagram stream; replies carry the SOCKS header naming where they came from.
final class SOCKSUDPAssociation {
    let channel: any Channel
    let address: SocketAddress

    private init(channel: any Channel, address: SocketAddress) {
        self.channel = channel
        self.address = address
    }

    static func bind(host: String, clientIP: String, opener: any StreamOpener, idleTimeout: TimeAmount,
                     eventLoop: any EventLoop, logger: Logger) -> EventLoopFuture<SOCKSUDPAssociation> {
        // The client's own UDP port is learnt from its first datagram; only its address is known up front.
        let client = NIOLoopBoundBox<SocketAddress?>(nil, eventLoop: eventLoop)
        let framing = DatagramFlowTable.Framing(
            inbound: { envelope in
                guard envelope.remoteAddress.ipAddress == clientIP else { return nil }
                if client.value == nil { client.value = envelope.remoteAddress }
                guard envelope.remoteAddress == client.value,
                    let (target, payload) = SOCKSFrontProtocol.parseUDPRequest(envelope.data)
                else { return nil }
                return (.destination(target), payload, MuxOpenRequest(target: target, kind: .datagram))
            },
            outbound: { key, payload in
                guard case .destination(let source) = key, let to = client.value else { return nil }
                let framed = SOCKSFrontProtocol.udpReplyHeader(from: source, allocator: ByteBufferAllocator(), payload: payload)
                return AddressedEnvelope(remoteAddress: to, data: framed)
            })
        // Bound first, the table added on the loop afterwards: the table and the opener are loop-confined.
        return DatagramBootstrap(group: eventLoop)
            .channelOption(.socketOption(.so_rcvbuf), value: DatagramFlowTable.socketReceiveBuffer)
            .channelOption(.recvAllocator, value: FixedSizeRecvByteBufferAllocator(capacity: 65_536))
            .bind(host: host, port: 0)
            .assumeIsolated()
            .flatMapThrowing { channel in
                try channel.pipeline.syncOperations.addHandler(
                    DatagramFlowTable(framing: framing, idleTimeout: idleTimeout, logger: logger) { request, flow, promise in
                        opener.openStream(request, endpoint: flow, promise: promise)
                    })
                return SOCKSUDPAssociation(channel: channel, address: channel.localAddress!)
            }
            .nonisolated()
    }

    func close() {
        channel.close(promise: nil)
    }
}
