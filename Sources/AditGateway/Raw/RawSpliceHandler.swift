import AditMux
import AditTransport
import Logging
import NIOCore

/// One end of a raw WebSocket ⇄ TCP bridge: what one channel reads, its partner writes, with back-pressure both
/// ways (a side reads only while its partner is writable) and closes passed on. Each WebSocket message becomes
/// bytes on the TCP side; each TCP read becomes one binary message. Both channels live on one event loop.
///
/// Back-pressure alone does not bound memory: when a peer goes away, SwiftNIO reads everything it had sent up to its
/// end whether or not we asked (and a deflated WebSocket inflates it), and a side whose peer has gone may wait
/// forever for a target that never reads. So a side that keeps receiving while it cannot write (`maxBacklog`), or a
/// target that takes nothing for `lingerAfterPartnerGone` after the WebSocket went, aborts the bridge: RST to the
/// target, so that a cut transfer never looks complete.
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
    /// Bytes written to this side since its channel stopped being writable.
    private var backlog = 0
    private let logger: Logger

    /// Most bytes a side takes while it cannot write (its peer does not read) before the bridge is aborted.
    static let maxBacklog = 16 << 20
    /// How long the TCP side may go without taking a byte, after the WebSocket went, before the bridge is aborted.
    static let lingerAfterPartnerGone = TimeAmount.seconds(10)

    private init(side: Side, logger: Logger) {
        self.side = side
        self.logger = logger
    }

    /// Two handlers joined to each other: the first goes on the WebSocket channel, the second on the TCP one.
    static func pair(logger: Logger) -> (webSocket: RawSpliceHandler, tcp: RawSpliceHandler) {
        let webSocket = RawSpliceHandler(side: .webSocket, logger: logger)
        let tcp = RawSpliceHandler(side: .tcp, logger: logger)
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
        if !context.channel.isWritable {
            backlog += buffer.readableBytes
            if backlog > Self.maxBacklog {
                abort(because: "its \(side == .tcp ? "target" : "WebSocket peer") is not reading and \(backlog >> 20) MiB more arrived")
                return
            }
        }
        switch side {
        case .webSocket: context.write(NIOAny(TunnelMessage(buffer)), promise: nil)
        case .tcp: context.write(NIOAny(buffer), promise: nil)
        }
    }

    /// Ends both connections at once, dropping what is queued: the TCP side with an RST.
    private func abort(because why: String) {
        backlog = -1  // nothing more is written
        logger.warning("raw bridge aborted: \(why)")
        for handler in [self, partner].compactMap({ $0 }) {
            guard let channel = handler.context?.channel else { continue }
            handler.closing = true
            handler.backlog = -1
            if handler.side == .tcp { ChannelStreamEndpoint.setLingerZero(channel) }
            channel.close(promise: nil)
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
            let written = context.writeAndFlush(NIOAny(channel.allocator.buffer(capacity: 0)))
            written.whenComplete { _ in
                channel.close(promise: nil)
            }
            // A target that stops reading would hold the bridge (and what is queued for it) forever; one that is
            // slow but still taking bytes gets the time it needs.
            watchProgress(of: channel, buffered: Int.max)
        }
    }

    /// Every `lingerAfterPartnerGone`, the bytes still queued for `channel` must have gone down; else abort.
    private func watchProgress(of channel: any Channel, buffered before: Int) {
        channel.eventLoop.assumeIsolated().scheduleTask(in: Self.lingerAfterPartnerGone) { [self] in
            guard channel.isActive else { return }
            let buffered = (try? channel.syncOptions?.getOption(ChannelOptions.bufferedWritableBytes)) ?? 0
            guard buffered < before else {
                abort(because: "the target took nothing for \(Self.lingerAfterPartnerGone.nanoseconds / 1_000_000_000) s after the WebSocket ended (\(buffered) bytes still queued for it)")
                return
            }
            watchProgress(of: channel, buffered: buffered)
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
        if context.channel.isWritable {
            if backlog > 0 { backlog = 0 }
            partner?.partnerBecameWritable()
        }
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
