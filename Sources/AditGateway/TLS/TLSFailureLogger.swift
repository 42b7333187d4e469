import Logging
import NIOCore
import NIOSSL
import NIOTLS

/// On the server: a client whose TLS handshake fails (no certificate when one is required, a plain ws://
/// client on a wss:// port, …) gets one log line saying so, instead of an anonymous error.
final class TLSFailureLogger: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    private let logger: Logger

    init(logger: Logger) {
        self.logger = logger
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case TLSUserEvent.handshakeCompleted = event {
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let peer = context.channel.remoteAddress.map { HostPort(host: $0.ipAddress ?? "?", port: $0.port ?? 0).description } ?? "?"
        guard let why = TLSFailureReason.serverSide(error) else {
            // A connect-and-close (a health check, a port probe): not worth a line at info.
            logger.debug("a client closed before finishing the TLS handshake", metadata: ["peer": "\(peer)"])
            context.close(promise: nil)
            return
        }
        logger.info("TLS handshake with a client failed: \(why)", metadata: ["peer": "\(peer)"])
        logger.debug("TLS handshake failure in detail", metadata: ["peer": "\(peer)", "error": "\(error)"])
        context.close(promise: nil)
    }
}
