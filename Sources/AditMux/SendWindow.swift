/// Credit we hold to send on one stream: starts at the peer's initial window, shrinks with each DATA payload
/// we send, grows with each WINDOW_UPDATE (docs/protocol.md §7).
public struct SendWindow: Sendable, Equatable {
    public static let maxWindow = Int(Int32.max)

    public private(set) var available: Int

    public init(initial: UInt32) {
        self.available = Int(initial)
    }

    public mutating func consume(_ bytes: Int) {
        precondition(bytes >= 0 && bytes <= available, "sending \(bytes) bytes with only \(available) bytes of credit")
        available -= bytes
    }

    /// Adds credit. Credit above 2³¹−1 is a flow-control error of the peer.
    public mutating func credit(_ increment: UInt32) throws(MuxProtocolError) {
        let next = available + Int(increment)
        guard next <= SendWindow.maxWindow else {
            throw MuxProtocolError(.flowControl, "WINDOW_UPDATE takes the send window to \(next), above 2^31-1")
        }
        available = next
    }
}
