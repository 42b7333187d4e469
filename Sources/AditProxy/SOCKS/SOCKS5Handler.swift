import NIOCore

/// Runs `SOCKS5StateMachine` on a fresh connection to the proxy; once connected it installs what goes on top
/// (TLS, the WebSocket upgrade), hands it any bytes that came after the reply, and leaves the pipeline.
public final class SOCKS5Handler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private var machine: SOCKS5StateMachine
    private let done: EventLoopPromise<Void>
    private let timeout: TimeAmount
    private let install: (any Channel) throws -> Void
    private var finished = false
    private var started = false
    private var timer: Scheduled<Void>?

    public init(machine: SOCKS5StateMachine, timeout: TimeAmount, done: EventLoopPromise<Void>,
                install: @escaping (any Channel) throws -> Void) {
        self.machine = machine
        self.timeout = timeout
        self.done = done
        self.install = install
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: timeout) {
            let (handler, context) = bound.value
            handler.fail(SOCKS5TimeoutError(seconds: handler.timeout.nanoseconds / 1_000_000_000), context: context)
        }
        if context.channel.isActive { begin(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        context.fireChannelActive()
        begin(context: context)
    }

    private func begin(context: ChannelHandlerContext) {
        guard !started else { return }
        started = true
        perform(machine.start(), context: context)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        let bytes = unwrapInboundIn(data)
        perform(machine.receive(Array(bytes.readableBytesView)), context: context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        fail(SOCKS5ClosedError(), context: context)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(error, context: context)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    private func perform(_ action: SOCKS5StateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .send(let bytes):
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
        case .wait:
            break
        case .established(let leftover):
            finished = true
            timer?.cancel()
            do {
                try install(context.channel)
            } catch {
                done.fail(error)
                context.close(promise: nil)
                return
            }
            if !leftover.isEmpty {
                context.fireChannelRead(wrapInboundOut(context.channel.allocator.buffer(bytes: leftover)))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            done.succeed(())
        case .fail(let error):
            fail(error, context: context)
        }
    }

    private func fail(_ error: any Error, context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        done.fail(error)
        context.close(promise: nil)
    }
}

public struct SOCKS5TimeoutError: Error, Sendable, CustomStringConvertible {
    public var seconds: Int64
    public var description: String { "the SOCKS5 proxy did not connect us within \(seconds) s" }
}

public struct SOCKS5ClosedError: Error, Sendable, CustomStringConvertible {
    public var description: String { "the SOCKS5 proxy closed the connection before connecting us" }
}
