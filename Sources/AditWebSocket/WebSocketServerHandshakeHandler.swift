import AditTransport
import Logging
import NIOCore
import NIOHTTP1

/// Reads one HTTP request and either switches the connection to WebSocket or answers with a short plain-text
/// refusal and closes. A well-formed upgrade is first handed to `admit`, which decides — at once or later, after
/// checking a password off the event loop — through the `WebSocketAdmission` it is given: only an accepted
/// request gets its `101`, so a server can answer 401 or 403 instead. On acceptance `install` puts the data phase
/// after this handler, which hands it whatever the client sent behind its request and leaves, all in one step.
///
/// Works on raw bytes (see `HTTPRequestHeadParser`): add it to a fresh connection, after TLS if any.
public final class WebSocketServerHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    public typealias AdmissionCallback = (any Channel, HTTPRequestHead, WebSocketUpgrade, WebSocketAdmission) -> Void

    /// Bytes a client may send behind its request while the decision is pending.
    static let maxHeldBytes = 256 << 10

    private let routes: [WebSocketRoute]
    private let timeout: TimeAmount
    private let admit: AdmissionCallback
    private let logger: Logger
    private var parser = HTTPRequestHeadParser()
    private var state = State.readingRequest
    private var sawFirstByte = false
    private var timer: Scheduled<Void>?
    private var context: ChannelHandlerContext?

    private enum State {
        case readingRequest
        /// `admit` is deciding; what arrives meanwhile is kept for the data phase.
        case deciding(HTTPRequestHead, WebSocketUpgrade, held: ByteBuffer)
        case done
    }

    private let onTimeout: (@Sendable () -> Void)?

    public init(routes: [WebSocketRoute], timeout: TimeAmount = .seconds(10), logger: Logger,
                onTimeout: (@Sendable () -> Void)? = nil, admit: @escaping AdmissionCallback) {
        self.routes = routes
        self.timeout = timeout
        self.admit = admit
        self.logger = logger
        self.onTimeout = onTimeout
    }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        let logger = self.logger
        let onTimeout = self.onTimeout
        let seconds = timeout.nanoseconds / 1_000_000_000
        timer = context.eventLoop.scheduleTask(in: timeout) {
            if let onTimeout { onTimeout() } else { logger.debug("no complete upgrade request within \(seconds) s") }
            channel.close(promise: nil)
        }
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        self.context = nil
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch state {
        case .done:
            return
        case .deciding(let head, let upgrade, var held):
            var bytes = unwrapInboundIn(data)
            guard held.readableBytes + bytes.readableBytes <= Self.maxHeldBytes else {
                logger.debug("client sent too much before its upgrade was decided; closing")
                state = .done
                context.close(promise: nil)
                return
            }
            held.writeBuffer(&bytes)
            state = .deciding(head, upgrade, held: held)
        case .readingRequest:
            let bytes = unwrapInboundIn(data)
            if !sawFirstByte, let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self) {
                sawFirstByte = true
                // 0x16 opens a TLS handshake record: a wss:// client on this plain port. Answering at once (in
                // plain text, which its TLS stack reports as "wrong version") beats waiting out the timeout.
                if first == 0x16 {
                    logger.info("a client spoke TLS to this plain ws:// port (wss:// against ws://?): answered 400")
                    refuse(.badRequest, "This Adit server speaks plain ws://, not TLS: use a ws:// URL, or serve TLS with --tls-cert and --tls-key.\n",
                           extraHeaders: [], context: context)
                    return
                }
            }
            do {
                switch try parser.append(bytes) {
                case .needMoreData:
                    return
                case .head(let head, let rest):
                    respond(to: head, rest: rest, context: context)
                }
            } catch {
                // Not HTTP at all: nothing sensible to answer.
                state = .done
                logger.debug("bad request on the tunnel port", metadata: ["error": "\(error)"])
                context.close(promise: nil)
            }
        }
    }

    private func respond(to head: HTTPRequestHead, rest: ByteBuffer, context: ChannelHandlerContext) {
        switch WebSocketHandshake.evaluate(request: head, routes: routes) {
        case .refuse(let status, let text, let extra):
            logger.info("refused HTTP request", metadata: [
                "status": "\(status.code)", "uri": "\(LogText.bounded(head.uri))",
                "user_agent": "\(LogText.bounded(head.headers["User-Agent"].first ?? ""))",
            ])
            refuse(status, text, extraHeaders: extra, context: context)
        case .upgrade(let upgrade):
            state = .deciding(head, upgrade, held: rest)
            admit(context.channel, head, upgrade, WebSocketAdmission(handler: self))
        }
    }

    fileprivate func refuse(_ status: HTTPResponseStatus, _ text: String, extraHeaders: [(String, String)],
                            context: ChannelHandlerContext) {
        state = .done
        var headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", "\(text.utf8.count)"),
                       ("Connection", "close")]
        headers += extraHeaders
        let answer = Self.head(status, headers) + text
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: answer))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    fileprivate func decided(_ decision: WebSocketAdmission.Decision) {
        guard let context, case .deciding(_, let upgrade, let rest) = state else { return }
        switch decision {
        case .refuse(let status, let text, let extra):
            refuse(status, text, extraHeaders: extra, context: context)
        case .accept(let install):
            state = .done
            var headers = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Accept", upgrade.accept)]
            if let selected = upgrade.subprotocol { headers.append(("Sec-WebSocket-Protocol", selected)) }
            if let response = upgrade.extensionResponse {
                headers.append(("Sec-WebSocket-Extensions", response.offer.headerValue))
            }
            let answer = context.channel.allocator.buffer(string: Self.head(.switchingProtocols, headers))
            context.writeAndFlush(wrapOutboundOut(answer), promise: nil)
            do {
                try install(context.channel)
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

/// The decision on one well-formed upgrade request, made once, on the connection's event loop: `accept` sends
/// the `101` and installs the data phase; `refuse` answers (401 with `WWW-Authenticate`, 403 …) and closes.
public struct WebSocketAdmission {
    fileprivate enum Decision {
        case accept((any Channel) throws -> Void)
        case refuse(HTTPResponseStatus, String, [(String, String)])
    }

    private weak var handler: WebSocketServerHandshakeHandler?

    fileprivate init(handler: WebSocketServerHandshakeHandler) {
        self.handler = handler
    }

    public func accept(install: @escaping (any Channel) throws -> Void) {
        handler?.decided(.accept(install))
    }

    public func refuse(_ status: HTTPResponseStatus, _ text: String, extraHeaders: [(String, String)] = []) {
        handler?.decided(.refuse(status, text.hasSuffix("\n") ? text : text + "\n", extraHeaders))
    }
}
