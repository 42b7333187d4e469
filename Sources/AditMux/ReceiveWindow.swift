/// Credit we gave the peer on one stream. Credit comes back only for bytes our application consumed, so a slow
/// reader holds at most `initial` bytes in memory (docs/protocol.md §7).
public struct ReceiveWindow: Sendable, Equatable {
    public let initial: UInt32
    /// Credit the peer still holds.
    public private(set) var granted: Int
    /// Received bytes the application has not consumed yet.
    public private(set) var unconsumed: Int
    /// Consumed bytes whose credit we have not returned yet.
    public private(set) var pendingCredit: Int

    public init(initial: UInt32) {
        self.initial = initial
        self.granted = Int(initial)
        self.unconsumed = 0
        self.pendingCredit = 0
    }

    public mutating func receive(_ bytes: Int) throws(MuxProtocolError) {
        guard bytes <= granted else {
            throw MuxProtocolError(.flowControl, "peer sent \(bytes) bytes with only \(granted) bytes of credit")
        }
        granted -= bytes
        unconsumed += bytes
    }

    /// Records that the application consumed `bytes`; returns the WINDOW_UPDATE increment to send, if it is
    /// time to send one (a quarter of the window consumed, so updates stay few).
    public mutating func consume(_ bytes: Int) -> UInt32? {
        precondition(bytes <= unconsumed, "consuming \(bytes) bytes but only \(unconsumed) are unconsumed")
        unconsumed -= bytes
        pendingCredit += bytes
        guard pendingCredit > 0, pendingCredit >= Int(initial) / 4 else { return nil }
        let increment = pendingCredit
        pendingCredit = 0
        granted += increment
        return UInt32(increment)
    }
}
