import NIOCore

/// What a tunnel session asks of the program around it. Called on the tunnel's event loop.
public protocol MuxSessionDelegate: AnyObject {
    /// Both sides exchanged HELLO: streams may be opened.
    func muxSessionDidBecomeReady(_ session: MuxHandler)

    /// The peer wants a stream. Answer later with `accept(_:endpoint:)` or `reject(_:code:reason:)`.
    func muxSession(_ session: MuxHandler, didReceiveOpen stream: StreamID, request: MuxOpenRequest)

    /// The peer asks us to listen on its behalf (reverse forwarding). Answer with
    /// `acceptListen(_:bound:)` or `reject(_:code:reason:)`; only sides that announce `.reverse` get these.
    func muxSession(_ session: MuxHandler, didReceiveListen listener: StreamID, request: MuxListenRequest)

    /// A listener ended after it was set up: the peer or we reset it. Not called when the session closes.
    func muxSession(_ session: MuxHandler, listenerDidClose listener: StreamID, code: ResetCode, reason: String)

    /// An established stream ended (any way, including with its session): what it carried and how it ended.
    func muxSession(_ session: MuxHandler, streamDidEnd record: MuxStreamRecord)

    /// The peer started a graceful drain: open no new streams on this session.
    func muxSessionDidReceiveGoAway(_ session: MuxHandler, code: ResetCode, reason: String)

    /// The session is over; every stream was reset. `error` says why, nil for an orderly close.
    func muxSessionDidClose(_ session: MuxHandler, error: (any Error)?)
}

extension MuxSessionDelegate {
    public func muxSession(_ session: MuxHandler, didReceiveListen listener: StreamID, request: MuxListenRequest) {
        session.reject(listener, code: .notAllowed, reason: "this side does not listen on the peer's behalf")
    }

    public func muxSession(_ session: MuxHandler, listenerDidClose listener: StreamID, code: ResetCode, reason: String) {}

    public func muxSession(_ session: MuxHandler, streamDidEnd record: MuxStreamRecord) {}
}
