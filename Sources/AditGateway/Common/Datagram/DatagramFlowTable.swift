import AditMux
import Logging
import NIOCore

/// One UDP socket shared by many flows (the client's `-L …/udp`, the server's `-R …/udp`, a SOCKS5 UDP
/// association): each flow — one sender, or one destination for SOCKS — gets its own datagram stream, opened at
/// its first datagram and closed when it goes quiet. Replies on a stream go back to that flow's address.
final class DatagramFlowTable: ChannelInboundHandler {
    typealias InboundIn = AddressedEnvelope<ByteBuffer>
    typealias OutboundOut = AddressedEnvelope<ByteBuffer>

    /// What identifies a flow.
    enum Key: Hashable, CustomStringConvertible {
        case sender(SocketAddress)
        case destination(MuxTarget)

        var description: String {
            switch self {
            case .sender(let address): return address.shown
            case .destination(let target): return "\(target)"
            }
        }
    }

    /// How datagrams of this socket map to flows: which flow a received datagram belongs to (and the stream to
    /// open for it if it is new), and how a reply is addressed. Nil drops the datagram.
    struct Framing {
        var inbound: (AddressedEnvelope<ByteBuffer>) -> (key: Key, payload: ByteBuffer, request: MuxOpenRequest)?
        var outbound: (Key, ByteBuffer) -> AddressedEnvelope<ByteBuffer>?
    }

    /// SO_RCVBUF of a shared UDP socket (the kernel caps it at net.core.rmem_max): the default ~200 KiB drops a
    /// burst of a few large datagrams while the loop serves other sockets.
    static let socketReceiveBuffer: SocketOptionValue = 4 << 20

    private let framing: Framing
    private let idleTimeout: TimeAmount
    private let maxFlows: Int
    private let logger: Logger
    /// Opens the stream for a new flow; the promise says whether it opened.
    private let openFlow: (MuxOpenRequest, DatagramFlowEndpoint, EventLoopPromise<Void>) -> Void
    private var flows: [Key: DatagramFlowEndpoint] = [:]
    /// Flows whose stream was refused: their datagrams are dropped for a while rather than asking again for each.
    private var refused: [Key: NIODeadline] = [:]
    private var context: ChannelHandlerContext?
    private(set) var dropped = 0

    init(framing: Framing, idleTimeout: TimeAmount, maxFlows: Int = 4096, logger: Logger,
         openFlow: @escaping (MuxOpenRequest, DatagramFlowEndpoint, EventLoopPromise<Void>) -> Void) {
        self.framing = framing
        self.idleTimeout = idleTimeout
        self.maxFlows = maxFlows
        self.logger = logger
        self.openFlow = openFlow
    }

    var flowCount: Int { flows.count }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        closeAll()
    }

    func channelInactive(context: ChannelHandlerContext) {
        closeAll()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A lost datagram (ICMP unreachable, no buffer) is what UDP allows; the socket goes on.
        logger.debug("UDP socket error", metadata: ["error": "\(error)"])
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var envelope = unwrapInboundIn(data)
        envelope.data = compactDatagram(envelope.data, allocator: context.channel.allocator)
        guard let (key, payload, request) = framing.inbound(envelope) else {
            dropped += 1
            return
        }
        if let flow = flows[key] {
            flow.received(payload)
            return
        }
        if let until = refused[key] {
            if NIODeadline.now() < until {
                dropped += 1
                return
            }
            refused[key] = nil
        }
        guard flows.count < maxFlows else {
            dropped += 1
            logger.debug("UDP datagram dropped: \(maxFlows) flows already open on this socket")
            return
        }
        let flow = DatagramFlowEndpoint(table: self, key: key, eventLoop: context.eventLoop, idleTimeout: idleTimeout)
        flows[key] = flow
        let promise = context.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenFailure { [self] error in
            // A refusal (policy, an unreachable target) is remembered for a few seconds so its datagrams do not
            // each ask again; a flow that merely lost its tunnel starts over with its next datagram.
            switch StreamOpenFailure(error) {
            case .notAllowed, .refused, .unreachable, .timedOut:
                self.logger.notice("UDP flow from \(key) to \(request.target) failed: \(error)")
                self.refused[key] = .now() + .seconds(5)
            case .unavailable, .other:
                self.logger.debug("UDP flow from \(key) to \(request.target) ended: \(error)")
            }
            flow.close(abort: false)
        }
        openFlow(request, flow, promise)
        flow.received(payload)
    }

    /// A reply for `key`'s flow.
    fileprivate func send(_ payload: ByteBuffer, to key: Key, promise: EventLoopPromise<Void>?) {
        guard let context, let envelope = framing.outbound(key, payload) else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        context.write(wrapOutboundOut(envelope), promise: promise)
    }

    fileprivate func flush() { context?.flush() }

    fileprivate func remove(_ flow: DatagramFlowEndpoint) {
        if flows[flow.key] === flow { flows[flow.key] = nil }
    }

    func closeAll() {
        let all = flows.values
        flows = [:]
        for flow in all { flow.close(abort: false) }
    }
}

/// A datagram is read into a buffer big enough for any (64 KiB); a small one queued as a slice would pin all of
/// it, so it moves to a buffer of its own size (one copy of a small datagram, against 64 KiB held per datagram).
extension SocketAddress {
    /// `127.0.0.1:5353`, `[::1]:5353`: how users write addresses (NIO's description adds the family and the name).
    var shown: String {
        guard let ip = ipAddress else { return "\(self)" }
        return HostPort(host: ip, port: port ?? 0).description
    }
}

func compactDatagram(_ buffer: ByteBuffer, allocator: ByteBufferAllocator) -> ByteBuffer {
    guard buffer.capacity - buffer.readableBytes > 4096 else { return buffer }
    var copy = allocator.buffer(capacity: buffer.readableBytes)
    copy.writeImmutableBuffer(buffer)
    return copy
}

/// One flow of a shared UDP socket, as a stream endpoint. Datagrams arrive as the socket reads them (one
/// socket, many flows: no per-flow read control), so the mux's bounded datagram queue is what drops when a flow
/// sends faster than the tunnel carries.
final class DatagramFlowEndpoint: MuxStreamEndpoint {
    let key: DatagramFlowTable.Key
    let eventLoop: any EventLoop
    private weak var table: DatagramFlowTable?
    private var events: MuxStreamEvents?
    private var idle: IdleTimer?
    /// Datagrams that arrived before the stream was bound (none in practice: it binds as it opens).
    private var early: [ByteBuffer] = []
    private var closed = false

    fileprivate init(table: DatagramFlowTable, key: DatagramFlowTable.Key, eventLoop: any EventLoop,
                     idleTimeout: TimeAmount) {
        self.table = table
        self.key = key
        self.eventLoop = eventLoop
        self.idle = nil
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        self.idle = IdleTimer(eventLoop: eventLoop, timeout: idleTimeout) {
            // The flow went quiet: it ends, and with it its stream.
            bound.value.close(abort: false)
        }
    }

    fileprivate func received(_ payload: ByteBuffer) {
        guard !closed else { return }
        idle?.touch()
        if let events {
            events.received(payload)
        } else if early.count < 64 {
            early.append(payload)
        }
    }

    func bind(_ events: MuxStreamEvents) {
        self.events = events
        let early = self.early
        self.early = []
        for payload in early { events.received(payload) }
    }

    func unbind() { events = nil }
    func read() {}

    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        idle?.touch()
        guard let table, !closed else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        table.send(buffer, to: key, promise: promise)
    }

    func flush() { table?.flush() }
    func shutdownOutput() {}

    /// Called by the mux (after it unbound us) or by the table and the idle timer (the mux still bound: it
    /// learns the stream is over, so a flow never outlives its socket on the other side either).
    func close(abort: Bool) {
        guard !closed else { return }
        closed = true
        idle?.cancel()
        idle = nil
        let events = self.events
        self.events = nil
        table?.remove(self)
        events?.closed()
    }
}
