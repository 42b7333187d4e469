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

    /// Call on the channel's event loop. The bridge joins the pipeline at once and holds what happens before the
    /// stream is bound (a connection waiting for the tunnel can send its data and its end of file meanwhile).
    public init(_ channel: any Channel, holdingReads: Bool = false) {
        self.channel = channel
        self.readsHeld = holdingReads
        let sync = channel.pipeline.syncOperations
        _ = try? channel.syncOptions?.setOption(ChannelOptions.autoRead, value: false)
        _ = try? channel.syncOptions?.setOption(ChannelOptions.allowRemoteHalfClosure, value: true)
        let bridge = StreamBridgeHandler()
        if (try? sync.addHandler(bridge)) != nil { self.bridge = bridge }
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
        guard let bridge else {
            // The channel closed before we could join it: the stream learns it as a closure.
            events.closed()
            return
        }
        bridge.bind(events)
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
        // Through the pipeline, whose generic write is inlinable and so specialised here: `Channel.write` is
        // not, and instantiated generic metadata at run time on every call (callgrind: ~2,000 instructions).
        channel.pipeline.write(buffer, promise: promise)
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

/// Sits at the end of a stream's TCP channel and reports what happens there to the mux; until the stream is
/// bound it keeps what arrives (bytes, the end of input, the closure) and hands it over at binding.
final class StreamBridgeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    var events: MuxStreamEvents?
    private var early: [ByteBuffer] = []
    private var earlyInputClosed = false
    private var earlyInactive = false

    func bind(_ events: MuxStreamEvents) {
        self.events = events
        let early = self.early
        self.early = []
        for buffer in early { events.received(buffer) }
        if !early.isEmpty { events.readComplete() }
        if earlyInputClosed { events.inputClosed() }
        if earlyInactive { events.closed() }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if let events {
            events.received(unwrapInboundIn(data))
        } else {
            early.append(unwrapInboundIn(data))
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        events?.readComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            if let events { events.inputClosed() } else { earlyInputClosed = true }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let events { events.closed() } else { earlyInactive = true }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // ECONNRESET and friends: the channel closes, channelInactive resets the stream.
        context.close(promise: nil)
    }
}
