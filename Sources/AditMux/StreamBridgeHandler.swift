import NIOCore

/// Sits in a stream's local TCP channel and reports what happens there to the `MuxHandler` that owns the stream.
/// Both live on one event loop, so these are plain method calls.
final class StreamBridgeHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    private let mux: MuxHandler
    private let stream: MuxStream

    init(mux: MuxHandler, stream: MuxStream) {
        self.mux = mux
        self.stream = stream
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        mux.endpointRead(stream, unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        mux.endpointReadComplete(stream)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            mux.endpointInputClosed(stream)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        mux.endpointClosed(stream)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ECONNRESET and friends: the channel closes, channelInactive resets the stream.
        context.close(promise: nil)
    }
}
