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
        /// Largest message (after reassembly of fragments and after inflating) we accept; bigger ones close
        /// with 1009. Inflating stops at this bound, so a decompression bomb costs no more memory than this.
        public var maxMessageSize: Int = 1 << 20
        /// How long we wait for the peer's close frame after sending ours.
        public var closeTimeout: TimeAmount = .seconds(3)
        /// permessage-deflate as agreed in the handshake; nil when it was not.
        public var deflate: PerMessageDeflateAgreement?
        /// Our settings (mode, level, when to skip), used when `deflate` is set.
        public var compression = CompressionSettings()
        /// Text messages are passed up as their bytes (a raw bridge) rather than refused with 1003 (the tunnel).
        public var acceptsText = false
        public init() {}
    }

    private let isClient: Bool
    private let configuration: Configuration
    private var parser: WebSocketFrameParser
    private var closing = WebSocketCloseStateMachine()
    private var logger: Logger

    private var fragments: ByteBuffer?
    private var fragmentOpcode: WebSocketOpcode?
    private var fragmentCompressed = false
    private let codec: PerMessageDeflateCodec?
    private var closeTimeout: Scheduled<Void>?
    private var pendingClosePromises: [EventLoopPromise<Void>] = []
    private var maskKeys = MaskKeySource()
    /// The latest ping's payload, answered once the socket is writable again: a peer that pings without reading
    /// gets one pong, not one per ping queued in our memory (RFC 6455 §5.5.3 allows answering only the latest).
    private var pendingPong: ByteBuffer?

    public init(role: WebSocketFrameParser.Role, configuration: Configuration = .init(), logger: Logger) {
        self.isClient = role == .client
        self.configuration = configuration
        // A compressed frame of random data is a little larger than the message it carries.
        let framePayloadLimit = configuration.deflate == nil
            ? configuration.maxMessageSize : configuration.maxMessageSize + configuration.maxMessageSize / 32 + 1024
        self.parser = WebSocketFrameParser(role: role, maxFramePayload: framePayloadLimit)
        self.logger = logger
        self.codec = configuration.deflate.map { PerMessageDeflateCodec(agreement: $0, settings: configuration.compression) }
    }

    /// permessage-deflate totals of this connection; nil when it was not negotiated. Read on the event loop.
    public var compressionStatistics: CompressionStatistics? { codec?.statistics }

    // MARK: Inbound

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        // The socket backed up: the link (or the peer) is the limit for now, which `auto` weighs.
        if !context.channel.isWritable { codec?.noteBackedUp() }
        if context.channel.isWritable, let payload = pendingPong {
            pendingPong = nil
            if closing.isOpen {
                writeFrame(context: context, opcode: .pong, payload: TunnelMessage(payload))
                context.flush()
            }
        }
        context.fireChannelWritabilityChanged()
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        parser.append(unwrapInboundIn(data))
        do {
            while closing.state != .closed, let frame = try parser.next(allocator: context.channel.allocator) {
                try handle(frame, context: context)
            }
        } catch let error as WebSocketProtocolError {
            logger.warning("\(error)")
            fail(context: context, code: error.closeCode, reason: error.detail)
        } catch let error as PerMessageDeflateError {
            let code: WebSocketCloseCode
            switch error {
            case .tooLarge: code = .messageTooBig
            case .corrupt: code = .invalidPayload
            case .zlib: code = .internalError
            }
            logger.warning("closing the WebSocket: \(error)", metadata: ["close_code": "\(code.rawValue)"])
            fail(context: context, code: code, reason: "\(error)")
        } catch {
            fail(context: context, code: .internalError, reason: "\(error)")
        }
    }

    private func handle(_ frame: WebSocketFrame, context: ChannelHandlerContext) throws {
        let compressed = frame.rsv & 0x40 != 0
        guard frame.rsv & 0x30 == 0 else {
            throw WebSocketProtocolError(.protocolError, "frame with RSV2/RSV3 set, but no extension uses them")
        }
        if compressed {
            guard codec != nil else {
                throw WebSocketProtocolError(.protocolError, "frame with RSV1 set, but permessage-deflate was not negotiated")
            }
            guard frame.opcode == .binary || frame.opcode == .text else {
                throw WebSocketProtocolError(.protocolError, "RSV1 set on a \(frame.opcode) frame (only the first frame of a data message may carry it)")
            }
        }
        switch frame.opcode {
        case .binary, .text:
            guard fragmentOpcode == nil else {
                throw WebSocketProtocolError(.protocolError, "new data frame while a fragmented message is open")
            }
            if frame.opcode == .text && !configuration.acceptsText {
                throw WebSocketProtocolError(.unacceptableData, "text messages are not part of the adit.v1 protocol")
            }
            if compressed {
                // Inflated even while closing: with context takeover, skipping a message would desynchronise.
                let expected = min(max(frame.payload.readableBytes * 4, 1024), configuration.maxMessageSize + 1)
                var inflated = context.channel.allocator.buffer(capacity: expected)
                try codec!.inflate(frame.payload, last: frame.fin, into: &inflated, limit: configuration.maxMessageSize)
                if frame.fin {
                    if closing.isOpen { context.fireChannelRead(wrapInboundOut(inflated)) }
                } else {
                    fragmentOpcode = frame.opcode
                    fragmentCompressed = true
                    fragments = inflated
                }
                return
            }
            guard closing.isOpen else { return }
            if frame.fin {
                context.fireChannelRead(wrapInboundOut(frame.payload))
            } else {
                fragmentOpcode = frame.opcode
                fragmentCompressed = false
                var first = frame.payload
                var assembled = context.channel.allocator.buffer(capacity: max(first.readableBytes * 2, 1024))
                assembled.writeBuffer(&first)
                fragments = assembled
            }
        case .continuation:
            guard fragmentOpcode != nil, var assembled = fragments else {
                throw WebSocketProtocolError(.protocolError, "continuation frame without a message to continue")
            }
            fragments = nil  // keep the assembled buffer uniquely referenced while appending
            if fragmentCompressed {
                try codec!.inflate(frame.payload, last: frame.fin, into: &assembled, limit: configuration.maxMessageSize)
            } else {
                guard assembled.readableBytes + frame.payload.readableBytes <= configuration.maxMessageSize else {
                    throw WebSocketProtocolError(.messageTooBig, "message larger than \(configuration.maxMessageSize) bytes")
                }
                var payload = frame.payload
                assembled.writeBuffer(&payload)
            }
            if frame.fin {
                fragmentOpcode = nil
                fragmentCompressed = false
                if closing.isOpen { context.fireChannelRead(wrapInboundOut(assembled)) }
            } else {
                fragments = assembled
            }
        case .ping:
            if closing.isOpen {
                if context.channel.isWritable {
                    writeFrame(context: context, opcode: .pong, payload: TunnelMessage(frame.payload))
                    context.flush()
                } else {
                    pendingPong = frame.payload
                }
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
            guard let reasonBytes = payload.readBytes(length: payload.readableBytes),
                let reason = String(validating: reasonBytes, as: UTF8.self)
            else {
                throw WebSocketProtocolError(.invalidPayload, "a close reason that is not UTF-8")
            }
            logger.debug("peer closed the WebSocket",
                         metadata: ["code": "\(code?.description ?? "none")", "reason": "\(LogText.bounded(reason))"])
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
        let message = unwrapOutboundIn(data)
        if let codec, codec.shouldCompress(size: message.byteCount, key: message.compressionKey) {
            writeCompressed(context: context, message: message, codec: codec, promise: promise)
        } else {
            writeFrame(context: context, opcode: .binary, payload: message, promise: promise)
        }
    }

    /// One frame with RSV1 set: the payload is compressed into a fresh buffer that keeps room in front for the
    /// header, so header, payload and (client) masking need no further copy.
    private func writeCompressed(context: ChannelHandlerContext, message: TunnelMessage, codec: PerMessageDeflateCodec,
                                 promise: EventLoopPromise<Void>?) {
        let headroom = WebSocketFrame.maxHeaderSize
        // Room for zlib's worst case (stored blocks: about 5 bytes per 16 KiB), so the compressor never regrows it.
        var frame = context.channel.allocator.buffer(capacity: headroom + message.byteCount + message.byteCount / 256 + 64)
        frame.moveWriterIndex(forwardBy: headroom)
        frame.moveReaderIndex(forwardBy: headroom)
        do {
            try codec.compress(message.parts, size: message.byteCount, key: message.compressionKey, into: &frame)
        } catch {
            // Nothing reached the compressor's history, so sending this one as it is stays consistent.
            logger.warning("cannot compress a message, sending it uncompressed: \(error)")
            writeFrame(context: context, opcode: .binary, payload: message, promise: promise)
            return
        }
        let length = frame.readableBytes
        let key: UInt32? = isClient ? maskKeys.key() : nil
        var header = context.channel.allocator.buffer(capacity: headroom)
        WebSocketFrame.writeHeader(fin: true, rsv: 0x40, opcode: .binary, length: length, maskKey: key, into: &header)
        if let key {
            frame.withUnsafeMutableReadableBytes { bytes in
                WebSocketMasking.apply(key: key, source: UnsafeRawBufferPointer(bytes), destination: bytes)
            }
        }
        frame.moveReaderIndex(to: frame.readerIndex - header.readableBytes)
        frame.setBuffer(header, at: frame.readerIndex)
        context.write(wrapOutboundOut(frame), promise: promise)
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
        } else if let request = event as? TunnelCloseRequest {
            let code: WebSocketCloseCode
            switch request.reason {
            case .normal: code = .normal
            case .protocolError: code = .protocolError
            case .goingAway: code = .goingAway
            }
            if let promise { pendingClosePromises.append(promise) }
            // Close reasons are limited to 123 bytes of UTF-8.
            perform(closing.closeRequested(code: code, reason: String(request.detail.utf8.prefix(120)) ?? ""), context: context)
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }

    // MARK: Helpers

    private func fail(context: ChannelHandlerContext, code: WebSocketCloseCode, reason: String) {
        // The close frame first: a handler above that closes on errors would otherwise close with 1000.
        perform(closing.closeRequested(code: code, reason: reason), context: context)
        context.fireErrorCaught(WebSocketProtocolError(code, reason))
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
