import NIOCore

/// Swaps the HTTP handlers of a connection for the next protocol's (WebSocket after a 101, TLS or the upgrade
/// after a proxy's CONNECT) without losing or misrouting a byte.
///
/// The HTTP decoder may already hold bytes the peer sent right after the handshake (the tunnel HELLO arrives
/// in the same segment as the 101). Removing the decoder forwards them; and the new handlers start writing as
/// soon as they are added — which must not pass through the HTTP encoder or the write-observing response
/// decoder. So: drop the encoder, park the decoder's leftovers in a collector, add the new handlers after it,
/// then remove the collector, which replays the parked bytes to them.
public enum UpgradeHandoff {
    /// Completes once the new handlers are in place. `ByteToMessageHandler` leaves the pipeline one loop tick
    /// after it is asked to, so the new handlers go in only then.
    public static func perform<Encoder: ChannelHandler & RemovableChannelHandler, Decoder: ChannelHandler & RemovableChannelHandler>(
        context: ChannelHandlerContext, encoder: Encoder.Type, decoder: Decoder.Type,
        install: @escaping (any Channel) throws -> Void
    ) -> EventLoopFuture<Void> {
        let channel = context.channel
        let pipeline = context.pipeline.syncOperations
        let collector = LeftoverCollector()
        let decoderRemoved = context.eventLoop.makePromise(of: Void.self)
        do {
            try pipeline.removeHandler(context: try pipeline.context(handlerType: encoder))
            try pipeline.addHandler(collector, position: .after(context.handler))
            let decoderContext = try pipeline.context(handlerType: decoder)
            try pipeline.removeHandler(context: context)
            pipeline.removeHandler(context: decoderContext, promise: decoderRemoved)
        } catch {
            return context.eventLoop.makeFailedFuture(error)
        }
        return decoderRemoved.futureResult.assumeIsolated().flatMapThrowing {
            try install(channel)
            channel.pipeline.syncOperations.removeHandler(collector, promise: nil)
        }.nonisolated()
    }
}

/// Holds inbound bytes while the pipeline is rebuilt; hands them on when it is removed.
final class LeftoverCollector: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private var parked: [NIOAny] = []

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parked.append(data)
    }

    func channelReadComplete(context: ChannelHandlerContext) {}

    func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        // Replay while still linked in: a context that left the pipeline no longer reaches the next handler.
        let parked = self.parked
        self.parked = []
        for data in parked { context.fireChannelRead(data) }
        if !parked.isEmpty { context.fireChannelReadComplete() }
        context.leavePipeline(removalToken: removalToken)
    }
}
