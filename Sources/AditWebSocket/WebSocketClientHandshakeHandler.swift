import AditTransport
import Foundation
import Logging
import NIOCore
import NIOHTTP1

/// Sends the upgrade request, judges the answer and, on a valid 101, calls `onUpgrade` to install the
/// data-phase handlers and hands them the bytes that came after the 101 (the tunnel HELLO, or a first message
/// and even a close), then leaves the pipeline — all in one go, so nothing the server sent is lost however
/// quickly it closes. `upgraded` tells the dialler how it went.
///
/// Works on raw bytes: add it to a bare connection (or right after a proxy's CONNECT). See
/// `HTTPResponseHeadParser` for why it does not use NIO's HTTP decoder.
public final class WebSocketClientHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// Installs the data phase; the agreement is nil when permessage-deflate was not negotiated.
    public typealias UpgradeCallback = (any Channel, PerMessageDeflateAgreement?) throws -> Void

    private let configuration: WebSocketClientConfiguration
    private let key = WebSocketHandshake.makeKey()
    private let onUpgrade: UpgradeCallback
    private let upgraded: EventLoopPromise<Void>
    private var parser = HTTPResponseHeadParser()
    /// A refusal whose body we are still reading (for the reason), and the body so far.
    private var refusal: HTTPResponseHead?
    private var body = ByteBuffer()
    private var finished = false
    private var timer: Scheduled<Void>?
    private var bodyTimer: Scheduled<Void>?
    private var requestSent = false
    /// The first bytes of the answer, to tell a non-HTTP service at once.
    private var answerStart: [UInt8] = []

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

    private func sendRequest(context: ChannelHandlerContext) {
        guard !requestSent else { return }
        requestSent = true
        let head = WebSocketHandshake.requestHead(configuration: configuration, key: key)
        var text = "GET \(head.uri) HTTP/1.1\r\n"
        for (name, value) in head.headers { text += "\(name): \(value)\r\n" }
        text += "\r\n"
        context.writeAndFlush(wrapOutboundOut(context.channel.allocator.buffer(string: text)), promise: nil)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !finished else { return }
        let bytes = unwrapInboundIn(data)
        if refusal != nil {
            collectBody(bytes, context: context)
            return
        }
        // A service that is not HTTP (an SSH banner, a database greeting) is named by what it said, at once,
        // rather than by the reset or timeout that follows.
        if answerStart.count < 5 {
            answerStart += bytes.readableBytesView.prefix(5 - answerStart.count)
            if answerStart.count == 5 || bytes.readableBytes == 0, !"HTTP/".utf8.starts(with: answerStart) {
                fail(.notHTTP(Self.printable(bytes)), context: context)
                return
            }
        }
        let parsed: HTTPResponseHeadParser.Result
        do {
            parsed = try parser.append(bytes)
        } catch {
            fail(.invalidResponse("the answer is not HTTP (\(error))"), context: context)
            return
        }
        switch parsed {
        case .needMoreData:
            return
        case .head(let head, let rest):
            if head.status == .switchingProtocols {
                complete(head, rest: rest, context: context)
            } else {
                refusal = head
                // Wait briefly for the body: a line of a plain-text answer says why.
                let bound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
                bodyTimer = context.eventLoop.scheduleTask(in: .milliseconds(300)) {
                    let (handler, context) = bound.value
                    handler.refuse(context: context)
                }
                collectBody(rest, context: context)
            }
        }
    }

    private func collectBody(_ bytes: ByteBuffer, context: ChannelHandlerContext) {
        var bytes = bytes
        if body.readableBytes < 512 { body.writeBuffer(&bytes) }
        let expected = refusal?.headers["Content-Length"].first.flatMap { Int($0) } ?? Int.max
        if body.readableBytes >= min(expected, 512) { refuse(context: context) }
    }

    private func refuse(context: ChannelHandlerContext) {
        guard let head = refusal, !finished else { return }
        bodyTimer?.cancel()
        let text = String(decoding: body.readableBytesView.prefix(512), as: UTF8.self)
        // A line of a plain-text answer says why; HTML is noise in a log line.
        let isText = head.headers["Content-Type"].first?.lowercased().hasPrefix("text/plain") ?? false
        var reason = isText ? (text.split(whereSeparator: \.isNewline).first.map(String.init) ?? "") : ""
        if (300..<400).contains(head.status.code), let location = head.headers["Location"].first {
            reason = "Location: \(location)"
        }
        fail(.unexpectedStatus(head.status.code, head.status.reasonPhrase, body: reason), context: context)
    }

    private func complete(_ head: HTTPResponseHead, rest: ByteBuffer, context: ChannelHandlerContext) {
        let agreement: PerMessageDeflateAgreement?
        do {
            agreement = try WebSocketHandshake.validate(response: head, key: key, configuration: configuration)
        } catch {
            fail(error, context: context)
            return
        }
        finished = true
        timer?.cancel()
        do {
            try onUpgrade(context.channel, agreement)
        } catch {
            upgraded.fail(error)
            context.close(promise: nil)
            return
        }
        // The new handlers sit after this one: hand them what followed the 101, then step aside.
        if rest.readableBytes > 0 {
            context.fireChannelRead(wrapInboundOut(rest))
            context.fireChannelReadComplete()
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        upgraded.succeed(())
    }

    private func fail(_ error: WebSocketUpgradeError, context: ChannelHandlerContext) {
        guard !finished else { return }
        finished = true
        timer?.cancel()
        bodyTimer?.cancel()
        upgraded.fail(error)
        context.close(promise: nil)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        bodyTimer?.cancel()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if refusal != nil {
            refuse(context: context)
        } else {
            fail(.closedDuringHandshake, context: context)
        }
        context.fireChannelInactive()
    }

    /// The start of a non-HTTP answer as text fit for a log line: its first line, printable ASCII only.
    static func printable(_ bytes: ByteBuffer) -> String {
        let line = bytes.readableBytesView.prefix(60).prefix { $0 != 0x0D && $0 != 0x0A }
        return String(decoding: line.map { (0x20..<0x7F).contains($0) ? $0 : UInt8(ascii: ".") }, as: UTF8.self)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        if !finished {
            finished = true
            timer?.cancel()
            bodyTimer?.cancel()
            upgraded.fail(error)
        }
        context.close(promise: nil)
    }
}
