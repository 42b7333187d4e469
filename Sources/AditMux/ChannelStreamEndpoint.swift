import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A stream carried by a TCP connection (a local application's, or the target's on the server). The stream binds
/// to the real channel, with a `StreamBridgeHandler` at the end of its pipeline reporting what happens there:
/// one pipeline and one copy per direction fewer than swift-nio-http2's child channels, at the price of living
/// on the tunnel's event loop (docs/architecture.md).
public final class ChannelStreamEndpoint: MuxStreamEndpoint {
    public let channel: any Channel
    private var bridge: StreamBridgeHandler?
    /// A front that must answer its client before any byte of the stream flows (a SOCKS reply, `200 Connection
    /// established`) holds reads until it did; the mux's read requests wait meanwhile.
    private var readsHeld: Bool
    private var readWanted = false

    public init(_ channel: any Channel, holdingReads: Bool = false) {
        self.channel = channel
        self.readsHeld = holdingReads
    }

    /// The front answered its client: reads may flow.
    public func releaseReads() {
        guard readsHeld else { return }
        readsHeld = false
        if readWanted {
            readWanted = false
            channel.read()
        }
    }

    public var eventLoop: any EventLoop { channel.eventLoop }

    public func bind(_ events: MuxStreamEvents) {
        _ = channel.setOption(ChannelOptions.autoRead, value: false)
        _ = channel.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        let bridge = StreamBridgeHandler(events: events)
        do {
            try channel.pipeline.syncOperations.addHandler(bridge)
            self.bridge = bridge
        } catch {
            // The channel closed under us: the stream learns it as a closure.
            events.closed()
        }
    }

    public func unbind() {
        guard let bridge else { return }
        self.bridge = nil
        bridge.events = nil
        channel.pipeline.syncOperations.removeHandler(bridge, promise: nil)
    }

    public func read() {
        if readsHeld {
            readWanted = true
        } else {
            channel.read()
        }
    }

    public func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        channel.write(buffer, promise: promise)
    }

    public func flush() { channel.flush() }

    public func shutdownOutput() { channel.close(mode: .output, promise: nil) }

    public func close(abort: Bool) {
        if abort { Self.setLingerZero(channel) }
        channel.close(promise: nil)
    }

    /// SO_LINGER with a zero timeout: close sends RST instead of FIN, so the application reads ECONNRESET.
    public static func setLingerZero(_ channel: any Channel) {
        // On the channel's loop this is set at once, before the close that follows.
        _ = (channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0))
    }
}

/// Sits at the end of a stream's TCP channel and reports what happens there to the mux.
final class StreamBridgeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    var events: MuxStreamEvents?

    init(events: MuxStreamEvents) {
        self.events = events
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        events?.received(unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        events?.readComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            events?.inputClosed()
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        events?.closed()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ECONNRESET and friends: the channel closes, channelInactive resets the stream.
        context.close(promise: nil)
    }
}
