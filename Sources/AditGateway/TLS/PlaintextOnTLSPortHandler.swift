import Logging
import NIOCore

/// On a wss:// listener, ahead of TLS: a client that opens with an HTTP request line instead of a TLS handshake
/// is a ws:// client on a wss:// port. It gets a plain-text 400 saying so (as nginx does for "plain HTTP to an
/// HTTPS port"), which the client can show, instead of a TLS failure it can only call "closed during the
/// upgrade". Anything else goes on to TLS untouched, and this handler leaves.
final class PlaintextOnTLSPortHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = ByteBuffer

    static let answer = "This Adit server speaks TLS: use a wss:// URL.\n"

    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    private var answered = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !answered else { return }  // nothing more is read: TLS never starts on this connection
        let bytes = unwrapInboundIn(data)
        guard let first = bytes.getInteger(at: bytes.readerIndex, as: UInt8.self), Self.startsHTTPRequest(first) else {
            context.fireChannelRead(data)
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        let peer = context.channel.remoteAddress.map { HostPort(host: $0.ipAddress ?? "?", port: $0.port ?? 0).description } ?? "?"
        logger.info("a client spoke plain HTTP to this wss:// port (ws:// against wss://?): answered 400",
                    metadata: ["peer": "\(peer)"])
        let text = Self.answer
        let response = "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n"
            + "Content-Length: \(text.utf8.count)\r\nConnection: close\r\n\r\n" + text
        answered = true
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(channel.allocator.buffer(string: response))).whenComplete { _ in
            channel.close(promise: nil)
        }
    }

    /// A TLS record starts with 0x14–0x17; an HTTP request with an upper-case method letter.
    static func startsHTTPRequest(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z")
    }
}
