import AditMux
import NIOCore

/// A datagram stream carried by a connected UDP socket (the server's socket to a UDP target, or the client's to
/// the local target of a `-R …/udp`). Each read is one datagram; the stream ends when the flow goes quiet for
/// the idle timeout.
final class DatagramChannelEndpoint: MuxStreamEndpoint {
    let channel: any Channel
    private var handler: DatagramBridgeHandler?
    private var idle: IdleTimer?
    private let idleTimeout: TimeAmount

    init(_ channel: any Channel, idleTimeout: TimeAmount) {
        self.channel = channel
        self.idleTimeout = idleTimeout
    }

    var eventLoop: any EventLoop { channel.eventLoop }

    func bind(_ events: MuxStreamEvents) {
        let channel = self.channel
        idle = IdleTimer(eventLoop: channel.eventLoop, timeout: idleTimeout) { channel.close(promise: nil) }
        let handler = DatagramBridgeHandler(events: events, idle: idle)
        do {
            try channel.pipeline.syncOperations.addHandler(handler)
            self.handler = handler
        } catch {
            events.closed()
        }
    }

    func unbind() {
        idle?.cancel()
        guard let handler else { return }
        self.handler = nil
        handler.events = nil
        channel.pipeline.syncOperations.removeHandler(handler, promise: nil)
    }

    func read() { channel.read() }

    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        idle?.touch()
        // Through the pipeline, whose generic write is inlinable and so specialised here: `Channel.write` is
        // not, and instantiated generic metadata at run time on every call (callgrind: ~2,000 instructions).
        channel.pipeline.write(buffer, promise: promise)
    }

    func flush() { channel.flush() }
    func shutdownOutput() {}

    func close(abort: Bool) {
        idle?.cancel()
        channel.close(promise: nil)
    }
}

private final class DatagramBridgeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>

    var events: MuxStreamEvents?
    private let idle: IdleTimer?

    init(events: MuxStreamEvents, idle: IdleTimer?) {
        self.events = events
        self.idle = idle
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        idle?.touch()
        events?.received(compactDatagram(unwrapInboundIn(data).data, allocator: context.channel.allocator))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        events?.readComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        events?.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ICMP port unreachable surfaces as ECONNREFUSED on a connected UDP socket: a datagram was lost, as UDP
        // allows; the flow goes on (and ends when it goes quiet).
    }
}
