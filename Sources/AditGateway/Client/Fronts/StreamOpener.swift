import AditMux
import NIOCore

/// What a front needs from the tunnel: open a stream for a local connection and learn how it went. The tunnel
/// may be down for a while; the opener then holds the request (up to `--wait-for-tunnel`) instead of failing it.
/// Fronts are tested against a fake of this, without a tunnel.
package protocol StreamOpener: AnyObject {
    var eventLoop: any EventLoop { get }

    /// Opens a stream for `request` carried by `endpoint`. The promise succeeds when the server connected the
    /// target, and fails with a `MuxStreamOpenError` (its RESET) or a `TunnelUnavailableError`; on failure the
    /// endpoint is not closed, so the front can answer in its own protocol first.
    func openStream(_ request: MuxOpenRequest, endpoint: any MuxStreamEndpoint, promise: EventLoopPromise<Void>)
}

/// No tunnel came up in time for a connection that waited for one.
package struct TunnelUnavailableError: Error, CustomStringConvertible {
    package var reason: String
    package init(reason: String) { self.reason = reason }
    package var description: String { reason }
}

/// How a failed open reads in each front's protocol: one place maps the tunnel's outcome to a category.
package enum StreamOpenFailure: Equatable {
    case notAllowed, refused, unreachable, timedOut, unavailable, other

    package init(_ error: any Error) {
        if let open = error as? MuxStreamOpenError {
            switch open.code {
            case .notAllowed: self = .notAllowed
            case .refused: self = .refused
            case .unreachable: self = .unreachable
            case .timedOut: self = .timedOut
            case .resourceLimit: self = .unavailable
            default: self = .other
            }
        } else if error is TunnelUnavailableError {
            self = .unavailable
        } else {
            self = .other
        }
    }
}
