import AditMux
import AditTransport
import Logging
import NIOCore
import NIOHTTP1

/// `--http-proxy`: a local HTTP proxy for browsers, curl and package managers. `CONNECT host:port` becomes a
/// raw stream after `200 Connection established`; an absolute-form request (`GET http://host/path`) becomes one
/// stream per request, its head rewritten to origin form and its body streamed, while the client's connection
/// is kept alive across requests. Local credentials are asked for with 407 and `Proxy-Authenticate` (not 401);
/// a failed stream is answered 403 (denied, with the reason), 502 (refused, unreachable), 504 (timed out) or
/// 503 (no tunnel).
package enum HTTPProxyFront {
    static let headTimeout: TimeAmount = .seconds(30)

    package static func serve(_ channel: any Channel, opener: any StreamOpener, credentials: LocalCredentials?, logger: Logger) {
        do {
            try channel.pipeline.syncOperations.addHandler(
                HTTPProxyFrontHandler(opener: opener, credentials: credentials, logger: logger))
        } catch {
            channel.close(promise: nil)
        }
    }
}

final class HTTPProxyFrontHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Reading the next request head (after the previous exchange, on a kept-alive connection).
        case readingHead(HTTPRequestHeadParser)
        /// CONNECT asked; waiting for the stream's outcome.
        case connecting
        /// A forwarded request and its answer are under way.
        case exchanging(HTTPExchangeEndpoint)
        case closing
    }

    private let opener: any StreamOpener
    private let credentials: LocalCredentials?
    private let logger: Logger
    private var state = State.readingHead(HTTPRequestHeadParser())
    private var context: ChannelHandlerContext?
    /// Bytes read beyond the current message (a pipelined next request), kept until it is its turn.
    private var stash: ByteBuffer?
    private var headTimeout: Scheduled<Void>?

    init(opener: any StreamOpener, credentials: LocalCredentials?, logger: Logger) {
        self.opener = opener
        self.credentials = credentials
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        armHeadTimeout(context)
        context.read()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        headTimeout?.cancel()
        self.context = nil
    }

    private func armHeadTimeout(_ context: ChannelHandlerContext) {
        headTimeout?.cancel()
        let channel = context.channel
        headTimeout = context.eventLoop.scheduleTask(in: HTTPProxyFront.headTimeout) { channel.close(promise: nil) }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        process(context, unwrapInboundIn(data))
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        if case .readingHead = state, context.channel.isActive { context.read() }
        context.fireChannelReadComplete()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event {
            switch state {
            case .exchanging(let exchange): exchange.clientInputClosed()
            case .readingHead: context.close(promise: nil)
            case .connecting, .closing: break
            }
        }
        context.fireUserInboundEventTriggered(event)
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .exchanging(let exchange) = state { exchange.clientClosed() }
        state = .closing
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    private func process(_ context: ChannelHandlerContext, _ bytes: ByteBuffer) {
        switch state {
        case .readingHead(var parser):
            let result: HTTPRequestHeadParser.Result
            do {
                result = try parser.append(bytes)
            } catch {
                answer(context, .badRequest, "not an HTTP request: \(error)", close: true)
                return
            }
            switch result {
            case .needMoreData:
                state = .readingHead(parser)
            case .head(let head, let rest):
                headTimeout?.cancel()
                handle(context, head, rest: rest)
            }
        case .exchanging(let exchange):
            exchange.clientBytes(bytes)
        case .connecting, .closing:
            // Bytes after CONNECT wait for the answer (clients wait for it; these are held for the tunnel).
            stashBytes(bytes)
        }
    }

    private func stashBytes(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else { return }
        if stash == nil {
            stash = bytes
        } else {
            var more = bytes
            stash!.writeBuffer(&more)
        }
    }

    private func handle(_ context: ChannelHandlerContext, _ head: HTTPRequestHead, rest: ByteBuffer) {
        switch HTTPProxyRequest.decide(head, credentials: credentials) {
        case .reject(let status, let message, let ask):
            if status == .proxyAuthenticationRequired {
                logger.notice("HTTP proxy client sent no valid credentials; answered 407")
            } else {
                logger.notice("HTTP proxy request refused: \(message)")
            }
            answer(context, status, message, close: true, askForCredentials: ask)
        case .connect(let target):
            state = .connecting
            stashBytes(rest)
            connect(context, to: target)
        case .forward(let forward):
            let exchange = HTTPExchangeEndpoint(forward: forward, front: self, eventLoop: context.eventLoop)
            state = .exchanging(exchange)
            let promise = context.eventLoop.makePromise(of: Void.self)
            let logger = self.logger
            promise.futureResult.assumeIsolated().whenFailure { [self] error in
                logger.notice("HTTP proxy request to \(forward.target) failed: \(error)")
                exchange.openFailed()
                self.answer(context, HTTPProxyRequest.status(for: StreamOpenFailure(error)),
                            "\(forward.target): \(error)", close: true)
            }
            opener.openStream(MuxOpenRequest(target: forward.target), endpoint: exchange, promise: promise)
            exchange.clientBytes(rest)
        }
    }

    private func connect(_ context: ChannelHandlerContext, to target: MuxTarget) {
        let endpoint = ChannelStreamEndpoint(context.channel, holdingReads: true)
        let promise = context.eventLoop.makePromise(of: Void.self)
        let logger = self.logger
        promise.futureResult.assumeIsolated().whenComplete { [self] result in
            switch result {
            case .success:
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: "HTTP/1.1 200 Connection established\r\n\r\n")),
                                      promise: nil)
                // The stream takes the connection over: what the client sent behind CONNECT goes first.
                if let stash, stash.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(stash)) }
                stash = nil
                context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
                endpoint.releaseReads()
            case .failure(let error):
                logger.notice("HTTP proxy CONNECT to \(target) failed: \(error)")
                answer(context, HTTPProxyRequest.status(for: StreamOpenFailure(error)), "\(target): \(error)", close: true)
            }
        }
        opener.openStream(MuxOpenRequest(target: target), endpoint: endpoint, promise: promise)
    }

    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ message: String, close: Bool,
                        askForCredentials: Bool = false) {
        state = .closing
        let text = HTTPProxyRequest.errorResponse(status, message, askForCredentials: askForCredentials)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(string: text))).whenComplete { _ in
            if close { channel.close(promise: nil) }
        }
    }

    // MARK: For the exchange

    /// Response bytes for the client; `promise` completes when they are written (the stream's credit).
    fileprivate func writeToClient(_ bytes: ByteBuffer) -> EventLoopFuture<Void> {
        guard let context else { return opener.eventLoop.makeFailedFuture(ChannelError.ioOnClosedChannel) }
        return context.write(wrapOutboundOut(bytes))
    }

    fileprivate func flushClient() { context?.flush() }

    /// The exchange wants more of the request body from the client.
    fileprivate func readFromClient() { context?.read() }

    /// The request is complete; these bytes came after it (the next request, pipelined).
    fileprivate func leftover(_ bytes: ByteBuffer) { stashBytes(bytes) }

    /// The answer is complete: the connection serves the next request, or closes.
    fileprivate func exchangeFinished(_ exchange: HTTPExchangeEndpoint, keepAlive: Bool) {
        guard let context, case .exchanging(let current) = state, current === exchange else { return }
        guard keepAlive else {
            state = .closing
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(ByteBuffer())).whenComplete { _ in channel.close(promise: nil) }
            return
        }
        context.flush()
        state = .readingHead(HTTPRequestHeadParser())
        armHeadTimeout(context)
        if let next = stash {
            stash = nil
            process(context, next)
        } else {
            context.read()
        }
    }

    /// The exchange failed after the answer began: the client must see an error, not a short answer.
    fileprivate func exchangeAborted(_ exchange: HTTPExchangeEndpoint, answerStarted: Bool, why: String) {
        guard let context, case .exchanging(let current) = state, current === exchange else { return }
        if answerStarted {
            state = .closing
            logger.notice("HTTP proxy answer from \(exchange.target) cut short: \(why)")
            ChannelStreamEndpoint.setLingerZero(context.channel)
            context.close(promise: nil)
        } else {
            logger.notice("HTTP proxy request to \(exchange.target) failed: \(why)")
            answer(context, .badGateway, "\(exchange.target): \(why)", close: true)
        }
    }
}

/// One forwarded request as a stream endpoint: the mux reads the rewritten request from it and writes the
/// target's answer into it; it keeps track of both messages' framing, so the client's connection can carry the
/// next request once the answer is complete.
final class HTTPExchangeEndpoint: MuxStreamEndpoint {
    let eventLoop: any EventLoop
    private let forward: HTTPProxyRequest.Forward
    private weak var front: HTTPProxyFrontHandler?
    private var events: MuxStreamEvents?

    /// Request bytes for the target, not yet read by the mux (the head first).
    private var requestQueue: [ByteBuffer]
    private var requestBody: HTTPBodyFramer
    private var readWanted = false
    private var endSent = false

    private var responseHead = HTTPResponseHeadParser()
    private var responseBody: HTTPBodyFramer?
    private var answerStarted = false
    private var finished = false

    var target: MuxTarget { forward.target }

    fileprivate init(forward: HTTPProxyRequest.Forward, front: HTTPProxyFrontHandler, eventLoop: any EventLoop) {
        self.forward = forward
        self.front = front
        self.eventLoop = eventLoop
        self.requestQueue = [ByteBuffer(string: forward.head)]
        self.requestBody = HTTPBodyFramer(forward.bodyFraming)
    }

    // MARK: From the client

    fileprivate func clientBytes(_ bytes: ByteBuffer) {
        guard bytes.readableBytes > 0 else {
            deliverRequest()
            return
        }
        var bytes = bytes
        if !requestBody.finished {
            do {
                let n = try requestBody.scan(bytes)
                if n > 0 { requestQueue.append(bytes.readSlice(length: n)!) }
            } catch {
                front?.exchangeAborted(self, answerStarted: answerStarted, why: "the request body is malformed: \(error)")
                events?.closed()
                return
            }
        }
        if bytes.readableBytes > 0 { front?.leftover(bytes) }
        deliverRequest()
    }

    fileprivate func clientInputClosed() {
        if !requestBody.finished {
            // The client ended before its body did.
            front?.exchangeAborted(self, answerStarted: answerStarted, why: "the client ended its request early")
            events?.closed()
        }
    }

    fileprivate func clientClosed() {
        finished = true
        events?.closed()
    }

    fileprivate func openFailed() {
        finished = true
    }

    private func deliverRequest() {
        guard let events, readWanted else { return }
        if !requestQueue.isEmpty {
            readWanted = false
            let queue = requestQueue
            requestQueue = []
            for part in queue { events.received(part) }
            events.readComplete()
        } else if !requestBody.finished {
            front?.readFromClient()
        }
    }

    // MARK: MuxStreamEndpoint

    func bind(_ events: MuxStreamEvents) {
        self.events = events
    }

    func unbind() { events = nil }

    func read() {
        readWanted = true
        deliverRequest()
    }

    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?) {
        guard !finished, let front else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        var buffer = buffer
        var lastWrite: EventLoopFuture<Void>?
        do {
            while buffer.readableBytes > 0 && !finished {
                guard var body = responseBody else {
                    guard case .head(let head, let rest) = try responseHead.append(buffer) else {
                        break  // the head is still coming; its bytes wait in the parser
                    }
                    buffer = rest
                    answerStarted = true
                    if (100..<200).contains(head.status.code) && head.status.code != 101 {
                        // 100 Continue and friends: passed on; the real answer follows.
                        lastWrite = front.writeToClient(ByteBuffer(string: HTTPProxyRequest.clientResponseHead(head, keepAlive: true)))
                        responseHead = HTTPResponseHeadParser()
                        continue
                    }
                    let framing = try HTTPBodyFramer.framing(of: head, requestMethod: forward.method)
                    keepAlive = forward.clientKeepAlive && framing != .untilClose
                    lastWrite = front.writeToClient(ByteBuffer(string: HTTPProxyRequest.clientResponseHead(head, keepAlive: keepAlive)))
                    responseBody = HTTPBodyFramer(framing)
                    if responseBody!.finished { complete() }
                    continue
                }
                let n = try body.scan(buffer)
                responseBody = body
                if n > 0 { lastWrite = front.writeToClient(buffer.readSlice(length: n)!) }
                if body.finished { complete() } else if n == 0 { break }
            }
        } catch {
            abort("the target's answer is not valid HTTP: \(error)")
            promise?.fail(error)
            return
        }
        // Bytes beyond the end of the answer (more than the target framed) are dropped with the stream.
        if let lastWrite { lastWrite.cascade(to: promise) } else { promise?.succeed(()) }
    }

    private var keepAlive = false

    func flush() { front?.flushClient() }

    /// The target sent its end: that ends an answer framed by the connection; any other unfinished answer was
    /// cut short.
    func shutdownOutput() {
        guard !finished else { return }
        if let body = responseBody, body.framing == .untilClose {
            complete()
        } else {
            abort("the target closed before its answer was complete")
        }
    }

    func close(abort aborted: Bool) {
        guard !finished else { return }
        abort(aborted ? "the stream was reset" : "the stream ended before the answer was complete")
    }

    // MARK: Ends

    private func complete() {
        guard !finished else { return }
        finished = true
        front?.flushClient()
        // Our end of the stream: the request is over (the target answered it), so the stream can finish.
        if let events, !endSent {
            endSent = true
            if requestQueue.isEmpty && requestBody.finished { events.inputClosed() } else { events.closed() }
        }
        front?.exchangeFinished(self, keepAlive: keepAlive)
    }

    private func abort(_ why: String) {
        guard !finished else { return }
        finished = true
        front?.exchangeAborted(self, answerStarted: answerStarted, why: why)
        events?.closed()
    }
}
