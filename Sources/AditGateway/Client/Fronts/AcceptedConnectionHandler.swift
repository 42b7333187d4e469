import NIOCore

/// Waits until an accepted local connection is active (so reads can be requested on it), hands it over, and
/// leaves the pipeline.
final class AcceptedConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let onActive: (any Channel) -> Void

    init(onActive: @escaping (any Channel) -> Void) {
        self.onActive = onActive
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { activate(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        activate(context: context)
    }

    private var done = false
    private func activate(context: ChannelHandlerContext) {
        guard !done else { return }
        done = true
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        onActive(context.channel)
    }
}
