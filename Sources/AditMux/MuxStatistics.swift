/// Running totals of one session, kept as plain integers on the event loop so the data path pays no atomic
/// operation per frame; whoever exports metrics reads them now and then (`MuxHandler.statistics`).
public struct MuxStatistics: Sendable, Equatable {
    /// DATA payload bytes sent to and received from the peer.
    public var bytesSent = 0
    public var bytesReceived = 0
    /// Streams this side opened, and streams the peer opened.
    public var streamsOpened = 0
    public var streamsAccepted = 0
    /// Streams that ended with a RESET (sent or received), by reason.
    public var resets: [ResetCode: Int] = [:]
    /// Datagrams dropped before framing: their stream's queue was full, or they did not fit a message.
    public var datagramsDropped = 0

    public init() {}
}
