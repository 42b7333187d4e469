import AditTransport
import NIOCore
import NIOHTTP1

/// Runs `ProxyConnectStateMachine` on one connection to an HTTP proxy: writes its requests, reads each answer
/// to the end of its body (Content-Length, chunked, or the end of the connection), and reports how it ended.
/// On `.established` it installs what goes on top (TLS, the WebSocket upgrade), hands it any bytes that came
/// after the proxy's 200, and leaves the pipeline — synchronously, so nothing is lost or misrouted.
///
/// It works on raw bytes (see `HTTPResponseHeadParser` for why not NIO's HTTP codec): add it to a fresh
/// connection to the proxy.
public final class ProxyConnectHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public enum Outcome: Sendable {
        case established
        /// The proxy closed (or will close) this connection; dial again and go on with this state.
        case reconnect(ProxyConnectStateMachine)
    }

    private var machine: ProxyConnectStateMachine
    private let done: EventLoopPromise<Outcome>
    private let timeout: TimeAmount
    private let install: (any Channel) throws -> Void
    private var headParser = HTTPResponseHeadParser()
    private var response: (head: HTTPResponseHead, body: HTTPBodyReader)?
    private var finished = false
    private var started = false
    private var awaitingAnswer = false
    private var timer: Scheduled<Void>?

    public init(machine: ProxyConnectStateMachine, timeout: TimeAmount, done: EventLoopPromise<Outcome>,
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
            handler.finish(.failure(ProxyConnectError.timedOut(seconds: handler.timeout.nanoseconds / 1_000_000_000)),
                           context: context)
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
        perform(machine.connectionOpened(), rest: nil, context: context)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        var bytes: ByteBuffer? = unwrapInboundIn(data)
        while let input = bytes, !finished {
            bytes = nil
            do {
                if response == nil {
                    switch try headParser.append(input) {
                    case .needMoreData:
                        return
                    case .head(let head, let rest):
                        // No body: informational answers, 204/304, and a 2xx to CONNECT (the tunnel starts).
                        let code = head.status.code
                        let noBody = code < 200 || code == 204 || code == 304 || (200..<300).contains(code)
                        response = (head, HTTPBodyReader(head: head, noBody: noBody))
                        if noBody {
                            answered(rest: rest, context: context)
                        }
                        bytes = rest.readableBytes > 0 ? rest : nil
                    }
                } else if let rest = try response!.body.consume(input) {
                    answered(rest: rest, context: context)
                    // Pipelined bytes after an answer that needs another round are read as the next answer.
                    bytes = rest.readableBytes > 0 ? rest : nil
                }
            } catch {
                finish(.failure(ProxyConnectError.notHTTP("\(error)")), context: context)
                return
            }
        }
    }

    /// A whole answer is in; `rest` is what came after it.
    private func answered(rest: ByteBuffer, context: ChannelHandlerContext) {
        guard let (head, body) = response else { return }
        response = nil
        awaitingAnswer = false
        let willClose = !head.isKeepAlive || body.endsWithConnection
        perform(machine.receivedResponse(head, bodyStart: body.start, willClose: willClose), rest: rest, context: context)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            if let (head, body) = response, body.endsWithConnection {
                // An HTTP/1.0-style body that ends with the connection: that was the whole answer.
                response = nil
                awaitingAnswer = false
                perform(machine.receivedResponse(head, bodyStart: body.start, willClose: true), rest: nil, context: context)
            } else {
                perform(awaitingAnswer ? machine.connectionClosedEarly() : .fail(.closed("without answering CONNECT")),
                        rest: nil, context: context)
            }
        }
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish(.failure(error), context: context)
    }

    private func perform(_ action: ProxyConnectStateMachine.Action, rest: ByteBuffer?, context: ChannelHandlerContext) {
        guard !finished else { return }
        switch action {
        case .send(let request):
            awaitingAnswer = true
            context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: Self.serialize(request))),
                                  promise: nil)
        case .reconnectAndSend:
            finish(.success(.reconnect(machine)), context: context)
        case .established:
            finished = true
            timer?.cancel()
            do {
                try install(context.channel)
            } catch {
                done.fail(error)
                context.close(promise: nil)
                return
            }
            if let rest, rest.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            done.succeed(.established)
        case .fail(let error):
            finish(.failure(error), context: context)
        }
    }

    private func finish(_ result: Result<Outcome, any Error>, context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        done.completeWith(result)
        context.close(promise: nil)
    }

    static func serialize(_ head: HTTPRequestHead) -> String {
        var text = "\(head.method.rawValue) \(head.uri) HTTP/1.1\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }
}
