import NIOCore

/// What a tunnel session asks of the program around it. Called on the tunnel's event loop.
public protocol MuxSessionDelegate: AnyObject {
    /// Both sides exchanged HELLO: streams may be opened.
    func muxSessionDidBecomeReady(_ session: MuxHandler)

    /// The peer wants a stream to `target`. Answer later with `accept(_:endpoint:)` or `reject(_:code:reason:)`.
    func muxSession(_ session: MuxHandler, didReceiveOpenFor stream: StreamID, target: MuxTarget)

    /// The peer started a graceful drain: open no new streams on this session.
    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String)

    /// The session is over; every stream was reset. `error` says why, nil for an orderly close.
    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?)
}
