import AditTransport
import Logging
import NIOCore

/// The WebSocket data phase (RFC 6455 §5–7) for one connection: raw bytes below, whole binary messages above.
/// Answers pings, runs the closing handshake, enforces masking rules and the message size bound. Written by hand
/// because NIOWebSocket masks byte by byte and copies every masked frame (docs/architecture.md).
public final class WebSocketConnectionHandler: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = TunnelMessage
    public typealias OutboundOut = ByteBuffer

    public struct Configuration: Sendable {
        /// Largest message (after reassembly of fragments) we accept; bigger ones close with 1009.
        public var maxMessageSize: Int = 1 << 20
        /// How long we wait for the peer's close frame after sending ours.
        public var closeTimeout: TimeAmount = .seconds(3)
        public init() {}
    }

    private let isClient: Bool
    private let configuration: Configuration
    private var parser: WebSocketFrameParser
    private var closing = WebSocketCloseStateMachine()
    private var logger: Logger

    private var fragments: ByteBuffer?
    private var fragmentOpcode: WebSocketOpcode?
    private var closeTimeout: Scheduled<Void>?
    private var pendingClosePromises: [EventLoopPromise<Void>] = []
    private var maskKeys = MaskKeySource()

    public init(role: WebSocketFrameParser.Role, configuration: Configuration = .init(), logger: Logger) {
        self.isClient = role == .client
        self.configuration = configuration
        self.parser = WebSocketFrameParser(role: role, maxFramePayload: configuration.maxMessageSize)
        self.logger = logger
    }

    // MARK: Inbound

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.append(unwrapInboundIn(data))
        do {
            while closing.state != .closed, let frame = try parser.next(allocator: context.channel.allocator) {
                try handle(frame, context: context)
            }
        } catch let error as WebSocketProtocolError {
            logger.warning("\(error)")
            fail(context: context, code: error.closeCode, reason: error.detail)
        } catch {
            fail(context: context, code: .internalError, reason: "\(error)")
        }
    }

    private func handle(_ frame: WebSocketFrame, context: ChannelHandlerContext) throws {
        guard frame.rsv == 0 else {
            throw WebSocketProtocolError(.protocolError, "frame with RSV bits \(frame.rsv >> 4) but no extension was negotiated")
        }
        switch frame.opcode {
        case .binary, .text:
            guard fragmentOpcode == nil else {
                throw WebSocketProtocolError(.protocolError, "new data frame while a fragmented message is open")
            }
            guard closing.isOpen else { return }
            if frame.opcode == .text {
                throw WebSocketProtocolError(.unacceptableData, "text messages are not part of the adit.v1 protocol")
            }
            if frame.fin {
                context.fireChannelRead(wrapInboundOut(frame.payload))
            } else {
                fragmentOpcode = frame.opcode
                var first = frame.payload
                var assembled = context.channel.allocator.buffer(capacity: max(first.readableBytes * 2, 1024))
                assembled.writeBuffer(&first)
                fragments = assembled
            }
        case .continuation:
            guard fragmentOpcode != nil, var assembled = fragments else {
                throw WebSocketProtocolError(.protocolError, "continuation frame without a message to continue")
            }
            guard assembled.readableBytes + frame.payload.readableBytes <= configuration.maxMessageSize else {
                throw WebSocketProtocolError(.messageTooBig, "message larger than \(configuration.maxMessageSize) bytes")
            }
            var payload = frame.payload
            fragments = nil  // keep the assembled buffer uniquely referenced while appending
            assembled.writeBuffer(&payload)
            if frame.fin {
                fragmentOpcode = nil
                if closing.isOpen { context.fireChannelRead(wrapInboundOut(assembled)) }
            } else {
                fragments = assembled
            }
        case .ping:
            if closing.isOpen {
                writeFrame(context: context, opcode: .pong, payload: TunnelMessage(frame.payload))
                context.flush()
            }
        case .pong:
            break
        case .close:
            var payload = frame.payload
            var code: WebSocketCloseCode? = nil
            if payload.readableBytes == 1 {
                throw WebSocketProtocolError(.protocolError, "close frame with a 1-byte payload")
            }
            if let raw = payload.readInteger(as: UInt16.self) {
                code = WebSocketCloseCode(rawValue: raw)
                if !code!.isValidOnWire {
                    throw WebSocketProtocolError(.protocolError, "close code \(raw) is not allowed on the wire")
                }
            }
            let reason = payload.readString(length: payload.readableBytes) ?? ""
            logger.debug("peer closed the WebSocket", metadata: ["code": "\(code?.description ?? "none")", "reason": "\(reason)"])
            perform(closing.receivedClose(code: code), context: context)
        }
    }

    public func channelInactive(context: ChannelHandlerContext) {
        closing.connectionLost()
        closeTimeout?.cancel()
        closeTimeout = nil
        let promises = pendingClosePromises
        pendingClosePromises = []
        promises.forEach { $0.succeed(()) }
        context.fireChannelInactive()
    }

    // MARK: Outbound

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        guard closing.isOpen else {
            promise?.fail(ChannelError.ioOnClosedChannel)
            return
        }
        writeFrame(context: context, opcode: .binary, payload: unwrapOutboundIn(data), promise: promise)
    }

    /// Closing from above runs the closing handshake first (code 1000) and completes when the socket is closed.
    public func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        guard mode == .all, closing.isOpen else {
            context.close(mode: mode, promise: promise)
            return
        }
        if let promise { pendingClosePromises.append(promise) }
        perform(closing.closeRequested(code: .normal), context: context)
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let request = event as? WebSocketCloseRequest {
            if let promise { pendingClosePromises.append(promise) }
            perform(closing.closeRequested(code: request.code, reason: request.reason), context: context)
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    // MARK: Helpers

    private func fail(context: ChannelHandlerContext, code: WebSocketCloseCode, reason: String) {
        context.fireErrorCaught(WebSocketProtocolError(code, reason))
        perform(closing.closeRequested(code: code, reason: reason), context: context)
    }

    private func perform(_ action: WebSocketCloseStateMachine.Action, context: ChannelHandlerContext) {
        switch action {
        case .none:
            break
        case .sendCloseAndWait(let code, let reason):
            writeClose(context: context, code: code, reason: reason)
            let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
            closeTimeout = context.eventLoop.scheduleTask(in: configuration.closeTimeout) {
                let (handler, context) = loopBound.value
                handler.perform(handler.closing.closeTimedOut(), context: context)
            }
        case .sendCloseAndDisconnect(let code):
            writeClose(context: context, code: code, reason: "")
            context.close(promise: nil)
        case .disconnect:
            closeTimeout?.cancel()
            context.close(promise: nil)
        }
    }

    private func writeClose(context: ChannelHandlerContext, code: WebSocketCloseCode, reason: String) {
        var payload = context.channel.allocator.buffer(capacity: 2 + min(reason.utf8.count, 123))
        payload.writeInteger(code.rawValue)
        payload.writeBytes(reason.utf8.prefix(123))
        writeFrame(context: context, opcode: .close, payload: TunnelMessage(payload))
        context.flush()
    }

    private func writeFrame(context: ChannelHandlerContext, opcode: WebSocketOpcode, payload: TunnelMessage,
                            promise: EventLoopPromise<Void>? = nil) {
        let length = payload.byteCount
        if isClient {
            // Masking needs a copy anyway: header and masked payload go into one fresh buffer, in one pass.
            let key = maskKeys.key()
            var frame = context.channel.allocator.buffer(capacity: WebSocketFrame.maxHeaderSize + length)
            WebSocketFrame.writeHeader(fin: true, rsv: 0, opcode: opcode, length: length, maskKey: key, into: &frame)
            frame.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { dst in
                var offset = 0
                for part in payload.parts {
                    part.withUnsafeReadableBytes { src in
                        WebSocketMasking.apply(key: WebSocketMasking.rotate(key, by: offset), source: src,
                                               destination: UnsafeMutableRawBufferPointer(rebasing: dst[offset..<offset + src.count]))
                    }
                    offset += part.readableBytes
                }
                return length
            }
            context.write(wrapOutboundOut(frame), promise: promise)
        } else {
            // Unmasked: the header is its own small buffer and the parts follow as they are (one writev).
            var header = context.channel.allocator.buffer(capacity: WebSocketFrame.maxHeaderSize)
            WebSocketFrame.writeHeader(fin: true, rsv: 0, opcode: opcode, length: length, maskKey: nil, into: &header)
            guard let last = payload.parts.indices.last else {
                context.write(wrapOutboundOut(header), promise: promise)
                return
            }
            context.write(wrapOutboundOut(header), promise: nil)
            for index in payload.parts.indices {
                context.write(wrapOutboundOut(payload.parts[index]), promise: index == last ? promise : nil)
            }
        }
    }
}
