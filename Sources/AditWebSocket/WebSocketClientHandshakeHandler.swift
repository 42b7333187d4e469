import Logging
import NIOCore
import NIOHTTP1

/// Sends the upgrade request, judges the answer and, on a valid 101, calls `onUpgrade` to install the
/// data-phase handlers before taking the HTTP handlers out. `upgraded` tells the dialler how it went.
///
/// Install after `HTTPRequestEncoder` and `ByteToMessageHandler(HTTPResponseDecoder(leftOverBytesStrategy:
/// .forwardBytes))` (not `addHTTPClientHandlers`: its header validator would stay behind); the bytes the
/// server sent right after its 101 (the tunnel HELLO) reach the new handlers.
public final class WebSocketClientHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = HTTPClientResponsePart
    public typealias OutboundOut = HTTPClientRequestPart

    /// Installs the data phase; the agreement is nil when permessage-deflate was not negotiated.
    public typealias UpgradeCallback = (any Channel, PerMessageDeflateAgreement?) throws -> Void

    private let configuration: WebSocketClientConfiguration
    private let key = WebSocketHandshake.makeKey()
    private let onUpgrade: UpgradeCallback
    private let upgraded: EventLoopPromise<Void>
    private var response: HTTPResponseHead?
    private var body = ""
    private var finished = false
    private var timer: Scheduled<Void>?

    public init(configuration: WebSocketClientConfiguration, upgraded: EventLoopPromise<Void>,
                onUpgrade: @escaping UpgradeCallback) {
        self.configuration = configuration
        self.upgraded = upgraded
        self.onUpgrade = onUpgrade
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        let seconds = configuration.handshakeTimeoutSeconds
        let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .seconds(seconds)) {
            let (handler, context) = bound.value
            handler.fail(.timedOut(seconds), context: context)
        }
        if context.channel.isActive { sendRequest(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        sendRequest(context: context)
        context.fireChannelActive()
    }

    private var requestSent = false
    private func sendRequest(context: ChannelHandlerContext) {
        guard !requestSent else { return }
        requestSent = true
        let head = WebSocketHandshake.requestHead(configuration: configuration, key: key)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        switch unwrapInboundIn(data) {
        case .head(let head):
            response = head
        case .body(var buffer):
            if body.utf8.count < 512 {
                body += buffer.readString(length: min(buffer.readableBytes, 512 - body.utf8.count)) ?? ""
            }
        case .end:
            guard let head = response else { return }
            // The decoder ends a 101 at once; completing here keeps its `.end` away from the new handlers.
            // Complete outside the decoder's decode loop: it defers its own removal until the loop ends and
            // would hold back (and misread) the writes the new handlers make.
            if head.status == .switchingProtocols {
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                context.eventLoop.execute {
                    let (handler, context) = bound.value
                    handler.complete(context: context)
                }
                return
            }
            // A line of a plain-text answer says why; HTML is noise in a log line.
            let isText = head.headers["Content-Type"].first?.lowercased().hasPrefix("text/plain") ?? false
            var text = isText ? (body.split(whereSeparator: \.isNewline).first.map(String.init) ?? "") : ""
            if (300..<400).contains(head.status.code), let location = head.headers["Location"].first {
                text = "Location: \(location)"
            }
            fail(.unexpectedStatus(head.status.code, head.status.reasonPhrase, body: text), context: context)
        }
    }

    private func complete(context: ChannelHandlerContext) {
        guard let head = response else { return }
        let agreement: PerMessageDeflateAgreement?
        do {
            agreement = try WebSocketHandshake.validate(response: head, key: key, configuration: configuration)
        } catch {
            fail(error, context: context)
            return
        }
        let onUpgrade = self.onUpgrade
        finished = true
        timer?.cancel()
        let upgraded = self.upgraded
        let channel = context.channel
        UpgradeHandoff.perform(context: context, encoder: HTTPRequestEncoder.self,
                               decoder: ByteToMessageHandler<HTTPResponseDecoder>.self) { channel in
            try onUpgrade(channel, agreement)
        }
            .whenComplete { result in
                switch result {
                case .success: upgraded.succeed(())
                case .failure(let error):
                    upgraded.fail(error)
                    channel.close(promise: nil)
                }
            }
    }

    private func fail(_ error: WebSocketUpgradeError, context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        upgraded.fail(error)
        context.close(promise: nil)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        fail(.closedDuringHandshake, context: context)
        context.fireChannelInactive()
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            finished = true
            timer?.cancel()
            upgraded.fail(error)
        }
        context.close(promise: nil)
    }
}
