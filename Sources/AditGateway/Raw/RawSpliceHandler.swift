import AditTransport
import NIOCore

/// One end of a raw WebSocket ⇄ TCP bridge: what one channel reads, its partner writes, with back-pressure both
/// ways (a side reads only while its partner is writable) and closes passed on. Each WebSocket message becomes
/// bytes on the TCP side; each TCP read becomes one binary message. Both channels live on one event loop.
final class RawSpliceHandler: ChannelDuplexHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundIn = Never
    typealias OutboundOut = Never

    enum Side {
        case webSocket
        case tcp
    }

    private let side: Side
    private var partner: RawSpliceHandler?
    private var context: ChannelHandlerContext?
    private var pendingRead = false
    private var closing = false
    /// What the partner read before this side's channel was ready (bytes a client sent with its upgrade).
    private var early: [ByteBuffer] = []
    private var closeWhenAdded = false

    private init(side: Side) {
        self.side = side
    }

    /// Two handlers joined to each other: the first goes on the WebSocket channel, the second on the TCP one.
    static func pair() -> (webSocket: RawSpliceHandler, tcp: RawSpliceHandler) {
        let webSocket = RawSpliceHandler(side: .webSocket)
        let tcp = RawSpliceHandler(side: .tcp)
        webSocket.partner = tcp
        tcp.partner = webSocket
        return (webSocket, tcp)
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if !early.isEmpty {
            for buffer in early { partnerWrite(buffer) }
            early = []
            context.flush()
        }
        if closeWhenAdded { partnerClosed() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        partner = nil
    }

    // MARK: Called by the partner

    private func partnerWrite(_ buffer: ByteBuffer) {
        guard let context else {
            early.append(buffer)
            return
        }
        guard !closing else { return }
        switch side {
        case .webSocket: context.write(NIOAny(TunnelMessage(buffer)), promise: nil)
        case .tcp: context.write(NIOAny(buffer), promise: nil)
        }
    }

    private func partnerFlush() {
        context?.flush()
    }

    private var partnerWritable: Bool { context?.channel.isWritable ?? false }

    private func partnerBecameWritable() {
        if pendingRead {
            pendingRead = false
            context?.read()
        }
    }

    /// The partner's connection ended: finish writing what it sent, then close this one. The WebSocket side's
    /// close runs the closing handshake (1000) after the queued messages.
    private func partnerClosed() {
        guard let context else {
            closeWhenAdded = true
            return
        }
        guard !closing else { return }
        closing = true
        let channel = context.channel
        switch side {
        case .webSocket:
            context.flush()
            channel.close(promise: nil)
        case .tcp:
            context.writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0))).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }

    // MARK: Own channel

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        partner?.partnerWrite(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        partner?.partnerFlush()
    }

    func channelInactive(context: ChannelHandlerContext) {
        let partner = self.partner
        self.partner = nil
        partner?.partner = nil
        partner?.partnerClosed()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // End of input from the TCP side: a WebSocket cannot be half-closed, so this ends the bridge.
        // The TCP side stays open until the WebSocket has closed, so what the peer still sends gets written.
        if case ChannelEvent.inputClosed = event {
            partner?.partnerClosed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { partner?.partnerBecameWritable() }
        context.fireChannelWritabilityChanged()
    }

    func read(context: ChannelHandlerContext) {
        if partner?.partnerWritable ?? true {
            context.read()
        } else {
            pendingRead = true
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
