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
        let text = "\(error)"
        if text.contains("EOF during handshake") {
            // A connect-and-close (a health check, a port probe): not worth a line at info.
            logger.debug("a client closed before finishing the TLS handshake", metadata: ["peer": "\(peer)"])
            context.close(promise: nil)
            return
        }
        let why = text.contains("HTTP_REQUEST") || text.contains("WRONG_VERSION_NUMBER")
            ? "it does not speak TLS (a ws:// client on this wss:// port?)"
            : text.contains("CERTIFICATE_REQUIRED") || text.contains("PEER_DID_NOT_RETURN_A_CERTIFICATE")
                ? "it sent no client certificate, and --tls-ca requires one"
                : text
        logger.info("TLS handshake with a client failed: \(why)", metadata: ["peer": "\(peer)"])
        context.close(promise: nil)
    }
}
