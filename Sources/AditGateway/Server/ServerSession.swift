import AditMux
import Logging
import NIOCore

/// The server's side of one tunnel: checks each OPEN against the policy, connects the target, and binds it.
final class ServerSession: MuxSessionDelegate {
    private let connector: TargetConnector
    private let logger: Logger
    private let onClose: (MuxHandler) -> Void
    private(set) weak var mux: MuxHandler?

    init(connector: TargetConnector, logger: Logger, onClose: @escaping (MuxHandler) -> Void) {
        self.connector = connector
        self.logger = logger
        self.onClose = onClose
    }

    func attach(_ mux: MuxHandler) {
        self.mux = mux
        mux.delegate = self
    }

    func muxSessionDidBecomeReady(_ session: MuxHandler) {
        logger.debug("tunnel session ready")
    }

    func muxSession(_ session: MuxHandler, didReceiveOpenFor stream: StreamID, target: MuxTarget) {
        let bound = NIOLoopBound(session, eventLoop: session.eventLoop!)
        let logger = self.logger
        connector.connect(target, on: bound.eventLoop).whenComplete { result in
            switch result {
            case .success(let channel):
                logger.debug("stream connected", metadata: ["stream": "\(stream)", "target": "\(target)"])
                bound.value.accept(stream, endpoint: channel)
            case .failure(let error):
                let failure = (error as? TargetConnector.Failure)
                    ?? TargetConnector.Failure(code: .internalError, reason: "\(error)")
                logger.info("stream refused: \(failure.reason)",
                            metadata: ["stream": "\(stream)", "code": "\(failure.code)"])
                bound.value.reject(stream, code: failure.code, reason: failure.reason)
            }
        }
    }

    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String) {
        logger.info("client is closing the tunnel", metadata: ["reason": "\(reason)"])
    }

    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?) {
        if let error {
            logger.info("tunnel closed: \(error)")
        } else {
            logger.info("tunnel closed")
        }
        onClose(session)
    }
}
