import NIOCore

/// Whatever carries one stream's bytes on this side of the tunnel: a TCP connection (`ChannelStreamEndpoint`),
/// one sender's flow on a shared UDP socket, a front that speaks HTTP to its client. The mux drives it with
/// these calls and learns what happens there through the `MuxStreamEvents` it binds. Everything runs on the
/// tunnel's event loop, so these are plain calls, with no hop through another thread.
public protocol MuxStreamEndpoint: AnyObject {
    var eventLoop: any EventLoop { get }

    /// From now on report reads, end of input and closure to `events`. Reads happen only when asked for.
    func bind(_ events: MuxStreamEvents)
    /// Stop reporting: the stream is over or failed to open, and whoever opened it now owns the endpoint again.
    func unbind()
    /// Deliver one more read (a datagram endpoint: one datagram) to the bound events, when there is one.
    func read()
    /// The promise completes when the bytes left for the application (the kernel has them): only then is credit
    /// returned, so a slow reader stalls its own stream only.
    func write(_ buffer: ByteBuffer, promise: EventLoopPromise<Void>?)
    func flush()
    /// The peer sent FIN: nothing more comes this way (`shutdown(SHUT_WR)`).
    func shutdownOutput()
    /// Ends the endpoint: `abort` when the stream did not end cleanly (RESET, tunnel lost), so the application
    /// sees an error (TCP: RST) rather than an end of file that looks like success.
    func close(abort: Bool)
}

/// The mux's side of one stream, as an endpoint reports to it. Valid until the endpoint is unbound; calls after
/// that are ignored.
public struct MuxStreamEvents {
    /// Unowned without the reference-count traffic of a checked `unowned`: this is on every read. Safe because
    /// the mux unbinds every endpoint (dropping these events) before it goes away (`teardown`).
    unowned(unsafe) let mux: MuxHandler
    let stream: MuxStream

    init(mux: MuxHandler, stream: MuxStream) {
        self.mux = mux
        self.stream = stream
    }

    /// Bytes (one datagram, on a datagram stream) the application sent.
    public func received(_ buffer: ByteBuffer) { mux.endpointRead(stream, buffer) }
    /// The read that was asked for is complete: the mux may frame what it got and ask for more.
    public func readComplete() { mux.endpointReadComplete(stream) }
    /// The application sent an end of file (half-close); the other direction goes on.
    public func inputClosed() { mux.endpointInputClosed(stream) }
    /// The endpoint is gone.
    public func closed() { mux.endpointClosed(stream) }
    /// The stream this endpoint carries.
    public var streamID: StreamID { stream.id }
}
