import AditMux
import Logging
import NIOCore

/// `-L`: every local connection becomes a stream to one fixed target. Early data flows at once; if the target
/// cannot be reached the local connection is aborted (RST), so the application sees a failure, not an empty
/// answer.
package enum ForwardFront {
    package static func forward(_ channel: any Channel, to target: MuxTarget, opener: any StreamOpener, logger: Logger) {
        let endpoint = ChannelStreamEndpoint(channel)
        let promise = channel.eventLoop.makePromise(of: Void.self)
        promise.futureResult.assumeIsolated().whenFailure { error in
            logger.notice("connection to \(target) failed: \(error)")
            endpoint.close(abort: true)
        }
        opener.openStream(MuxOpenRequest(target: target), endpoint: endpoint, promise: promise)
    }
}
