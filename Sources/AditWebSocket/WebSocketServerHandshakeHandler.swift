import AditTransport
import Logging
import NIOCore
import NIOHTTP1

/// Reads one HTTP request and either switches the connection to WebSocket — `onUpgrade` installs the data
/// phase after this handler, which hands it whatever the client sent behind its request and leaves, all in
/// one step — or answers with a short plain-text refusal and closes.
///
/// Works on raw bytes (see `HTTPRequestHeadParser`): add it to a fresh connection, after TLS if any.
public final class WebSocketServerHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public typealias UpgradeCallback = (any Channel, HTTPRequestHead, WebSocketUpgrade) throws -> Void

    private let routes: [WebSocketRoute]
    private let timeout: TimeAmount
    private let onUpgrade: UpgradeCallback
    private let logger: Logger
    private var parser = HTTPRequestHeadParser()
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
        do {
            switch try parser.append(unwrapInboundIn(data)) {
            case .needMoreData:
                return
            case .head(let head, let rest):
                done = true
                respond(to: head, rest: rest, context: context)
            }
        } catch {
            // Not HTTP at all: nothing sensible to answer.
            done = true
            logger.debug("bad request on the tunnel port", metadata: ["error": "\(error)"])
            context.close(promise: nil)
        }
    }

    private func respond(to head: HTTPRequestHead, rest: ByteBuffer, context: ChannelHandlerContext) {
        switch WebSocketHandshake.evaluate(request: head, routes: routes) {
        case .refuse(let status, let text, let extra):
            logger.info("refused HTTP request", metadata: [
                "status": "\(status.code)", "uri": "\(head.uri)",
                "user_agent": "\(head.headers["User-Agent"].first ?? "")",
            ])
            var headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "\(text.utf8.count)"),
                           ("Connection", "close")]
            headers += extra
            let answer = Self.head(status, headers) + text
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: answer))).whenComplete { _ in
                channel.close(promise: nil)
            }
        case .upgrade(let upgrade):
            var headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", upgrade.accept)]
            if let selected = upgrade.subprotocol { headers.append(("Sec-WebSocket-Protocol", selected)) }
            if let response = upgrade.extensionResponse {
                headers.append(("Sec-WebSocket-Extensions", response.offer.headerValue))
            }
            let answer = context.channel.allocator.buffer(string: Self.head(.switchingProtocols, headers))
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
            do {
                try onUpgrade(context.channel, head, upgrade)
            } catch {
                logger.error("could not switch the connection to WebSocket: \(error)")
                context.close(promise: nil)
                return
            }
            // The new handlers sit after this one: hand them what followed the request, then step aside.
            if rest.readableBytes > 0 {
                context.fireChannelRead(wrapInboundOut(rest))
                context.fireChannelReadComplete()
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    static func head(_ status: HTTPResponseStatus, _ headers: [(String, String)]) -> String {
        var text = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n"
        for (name, value) in headers { text += "\(name): \(value)\r\n" }
        return text + "\r\n"
    }
}
