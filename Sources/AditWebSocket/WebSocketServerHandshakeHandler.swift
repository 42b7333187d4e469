import AditTransport
import Logging
import NIOCore
import NIOHTTP1

/// Reads one HTTP request and either switches the connection to WebSocket (calling `onUpgrade` to install the
/// data-phase handlers) or answers with a short plain-text refusal and closes.
///
/// Install after `HTTPResponseEncoder` and `ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy:
/// .forwardBytes))`: bytes the client sent after its request reach the new handlers.
public final class WebSocketServerHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPServerRequestPart
    public typealias OutboundOut = HTTPServerResponsePart

    public typealias UpgradeCallback = (any Channel, HTTPRequestHead, WebSocketUpgrade) throws -> Void

    private let routes: [WebSocketRoute]
    private let timeout: TimeAmount
    private let onUpgrade: UpgradeCallback
    private let logger: Logger
    private var head: HTTPRequestHead?
    private var done = false
    private var timer: Scheduled<Void>?

    public init(routes: [WebSocketRoute], timeout: TimeAmount = .seconds(10), logger: Logger,
                onUpgrade: @escaping UpgradeCallback) {
        self.routes = routes
        self.timeout = timeout
        self.onUpgrade = onUpgrade
        self.logger = logger
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: timeout) { channel.close(promise: nil) }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !done else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            self.head = head
        case .body:
            break
        case .end:
            guard let head else { return }
            done = true
            // Answer outside the decoder's decode loop, which defers the decoder's removal until it ends.
            let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            context.eventLoop.execute {
                let (handler, context) = bound.value
                handler.respond(to: head, context: context)
            }
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Not HTTP at all: nothing sensible to answer.
        logger.debug("bad request on the tunnel port", metadata: ["error": "\(error)"])
        context.close(promise: nil)
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        switch WebSocketHandshake.evaluate(request: head, routes: routes) {
        case .refuse(let status, let text, let extra):
            logger.info("refused HTTP request", metadata: [
                "status": "\(status.code)", "uri": "\(head.uri)",
                "user_agent": "\(head.headers["User-Agent"].first ?? "")",
            ])
            var headers = HTTPHeaders()
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            headers.add(name: "Content-Length", value: "\(text.utf8.count)")
            headers.add(name: "Connection", value: "close")
            for (n, v) in extra { headers.add(name: n, value: v) }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))),
                          promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(string: text)))), promise: nil)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
        case .upgrade(let upgrade):
            var headers = HTTPHeaders()
            headers.add(name: "Upgrade", value: "websocket")
            headers.add(name: "Connection", value: "Upgrade")
            headers.add(name: "Sec-WebSocket-Accept", value: upgrade.accept)
            if let selected = upgrade.subprotocol { headers.add(name: "Sec-WebSocket-Protocol", value: selected) }
            if let response = upgrade.extensionResponse {
                headers.add(name: "Sec-WebSocket-Extensions", value: response.offer.headerValue)
            }
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .switchingProtocols,
                                                                  headers: headers))), promise: nil)
            context.flush()
            let logger = self.logger
            let onUpgrade = self.onUpgrade
            let channel = context.channel
            UpgradeHandoff.perform(context: context, encoder: HTTPResponseEncoder.self,
                                   decoder: ByteToMessageHandler<HTTPRequestDecoder>.self) { channel in
                try onUpgrade(channel, head, upgrade)
            }.whenFailure { error in
                logger.error("could not switch the connection to WebSocket: \(error)")
                channel.close(promise: nil)
            }
        }
    }
}
