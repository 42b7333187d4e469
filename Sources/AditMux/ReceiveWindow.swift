import NIOCore

/// Credit we give the peer on one stream, and how much we are willing to give (docs/protocol.md §7).
///
/// Credit comes back only for bytes our application consumed, so a slow reader holds at most `size` bytes in
/// memory. `size` adapts to what the stream moves, as TCP's receive-buffer auto-tuning and QUIC's receive
/// windows do: every round trip (at least) it measures the bytes the application consumed, scales them to one
/// round trip — the part of the path's bandwidth-delay product this stream uses — and aims at twice that. The
/// round trip is the session's minimum PING round trip, or this stream's credit loop when that is longer (a
/// peer that waited for credit sends again one loop after it gets some, and under load that loop includes
/// both sides' work). A stream held back by its window consumes a whole window per round trip while the path is not queueing,
/// so it doubles; once the link is full, queueing stretches the round trip, the measured share stops growing and
/// so does the window; a stream whose application reads slowly never grows; a stream whose share drops (others
/// joined, queues built up) shrinks by a quarter per measurement, at once after a long stall, never below its
/// initial window.
public struct ReceiveWindow: Sendable, Equatable {
    /// The window every stream starts with, announced in our HELLO: the floor of `size`.
    public let initial: Int
    /// What the peer may have in flight plus what we hold unconsumed: credit is returned up to this.
    public private(set) var size: Int
    /// Credit the peer still holds.
    public private(set) var granted: Int
    /// Received bytes the application has not consumed yet.
    public private(set) var unconsumed: Int
    /// Start of the current measurement (nil until the first consumption).
    private var epochStart: NIODeadline?
    /// Bytes consumed since `epochStart`.
    private var consumedInEpoch: Int = 0
    /// Bytes received since `epochStart`.
    private var receivedInEpoch: Int = 0
    /// When we last gave credit to a peer that had none left (it was waiting for us), until its next DATA.
    private var creditedStarvedPeerAt: NIODeadline?
    /// How long a peer waiting for credit takes to send again once it has some: the round trip of this
    /// stream's credit loop with nothing queued, including both sides' work under the load of the moment
    /// (on a busy loopback that is several times an idle PING's round trip). Smoothed over samples.
    public private(set) var creditRoundTrip: TimeAmount?

    public init(initial: UInt32) {
        self.initial = Int(initial)
        self.size = Int(initial)
        self.granted = Int(initial)
        self.unconsumed = 0
    }

    /// - Parameter now: when the bytes arrived; nil reads the clock, and only when a credit round trip ends.
    public mutating func receive(_ bytes: Int, at now: NIODeadline? = nil) throws(MuxProtocolError) {
        guard bytes <= granted else {
            throw MuxProtocolError(.flowControl, "peer sent \(bytes) bytes with only \(granted) bytes of credit")
        }
        granted -= bytes
        unconsumed += bytes
        receivedInEpoch += bytes
        if let credited = creditedStarvedPeerAt {
            creditedStarvedPeerAt = nil
            let sample = (now ?? .now()) - credited
            creditRoundTrip = creditRoundTrip.map { .nanoseconds(($0.nanoseconds * 3 + sample.nanoseconds) / 4) } ?? sample
        }
    }

    /// Records that the application consumed `bytes`; returns the WINDOW_UPDATE increment to send, if it is
    /// time to send one (a quarter of the window due, so updates stay few).
    ///
    /// - Parameters:
    ///   - now: when the bytes were consumed (a synthetic clock in tests).
    ///   - tuning: how far the window may adapt; nil keeps it fixed at its initial size.
    public mutating func consume(_ bytes: Int, at now: NIODeadline = .now(), tuning: Tuning? = nil) -> UInt32? {
        precondition(bytes <= unconsumed, "consuming \(bytes) bytes but only \(unconsumed) are unconsumed")
        unconsumed -= bytes
        if let tuning { adapt(consumed: bytes, at: now, tuning) }
        let due = size - granted - unconsumed
        guard due > 0, due >= size / 4 else { return nil }
        if granted == 0 && tuning != nil { creditedStarvedPeerAt = now }
        granted += due
        return UInt32(due)
    }

    /// What `consume` may do to the window, from the session: the round trip to measure over and the room left.
    public struct Tuning: Sendable, Equatable {
        /// The session's minimum round trip (PING to PONG): the path without queueing.
        public var minimumRoundTrip: TimeAmount
        /// The largest `size` may become (`--window`).
        public var maximum: Int
        /// How much the session may still add to all its windows together (its memory budget).
        public var allowance: Int

        public init(minimumRoundTrip: TimeAmount, maximum: Int, allowance: Int) {
            self.minimumRoundTrip = minimumRoundTrip
            self.maximum = maximum
            self.allowance = allowance
        }
    }

    private mutating func adapt(consumed bytes: Int, at now: NIODeadline, _ tuning: Tuning) {
        // The path's round trip, or the credit loop's when the load makes it longer.
        let roundTrip = max(tuning.minimumRoundTrip, creditRoundTrip ?? .zero)
        guard roundTrip.nanoseconds > 0, let start = epochStart else {
            epochStart = now
            consumedInEpoch = 0
            receivedInEpoch = 0
            return
        }
        consumedInEpoch += bytes
        let elapsed = now - start
        guard elapsed >= roundTrip else { return }
        // This stream's share of the bandwidth-delay product, from what it consumed over at least one round trip.
        // What the path delivered and the application took: consumption comes in bursts (a busy loop's turns; a
        // socket's kernel buffer, which Linux reopens to a writer only once half of it is free, a megabyte at a
        // time), and a backlog taken at once after a stall (its bytes arrived earlier) says nothing of the path.
        let moved = min(consumedInEpoch, receivedInEpoch)
        let share = Double(moved) * Double(roundTrip.nanoseconds) / Double(elapsed.nanoseconds)
        let wanted = Int(min(2 * share, Double(Int32.max)))
        if wanted > size {
            size += max(0, min(wanted - size, tuning.maximum - size, tuning.allowance))
        } else if wanted < size {
            // A quarter per measurement, or at once after a stall of many round trips: like TCP restarting
            // from its initial window after idling (RFC 7661), a stream that stopped consuming for that long
            // has shown what it needs, and its large window would only hold more of it unread.
            let stalled = elapsed >= roundTrip * 8
            size = max(initial, wanted, stalled ? 0 : size - size / 4)
        }
        epochStart = now
        consumedInEpoch = 0
        receivedInEpoch = 0
    }
}
