import AditMux
import NIOCore
import Testing

/// The receive window's auto-tuning on a synthetic clock: a path of `bandwidth` bytes per second and `baseRTT`
/// (credit reaches the sender after half of it, the data it pays for arrives after the other half; what the link
/// cannot carry yet waits in its queue), a sender with endless data, and an application that consumes at most
/// `appRate`.
private struct PathModel {
    var window: ReceiveWindow
    var bandwidth: Double
    let baseRTT: TimeAmount
    var appRate: Double = .infinity
    /// The receiver gets to the socket only every this many steps (a busy event loop takes what piled up at once).
    var stepsPerTurn = 1
    var maximum = 16 << 20
    /// The session's budget for all windows; this stream is the session's only one.
    var budget = Int.max / 2
    var now = NIODeadline.uptimeNanoseconds(1_000_000_000)
    /// Credit the sender holds, usable from the given time.
    private var credit: [(usableAt: NIODeadline, bytes: Int)] = []
    private var unread = 0
    private(set) var delivered = 0

    init(initial: UInt32, bandwidth: Double, baseRTT: TimeAmount) {
        self.window = ReceiveWindow(initial: initial)
        self.bandwidth = bandwidth
        self.baseRTT = baseRTT
        credit = [(now + .nanoseconds(baseRTT.nanoseconds / 2), Int(initial))]
    }

    /// Runs for `duration` in steps of a sixteenth of the round trip; returns the bytes delivered meanwhile.
    @discardableResult
    mutating func run(for duration: TimeAmount, knownRTT: TimeAmount? = nil) -> Int {
        let step = TimeAmount.nanoseconds(max(1, baseRTT.nanoseconds / 16))
        let end = now + duration
        let start = delivered
        var stepIndex = 0
        while now < end {
            now = now + step
            stepIndex += 1
            // The data paid for by credit usable half a round trip ago arrives now, at the link's rate; the
            // rest waits in the link's queue.
            var linkBytes = Int(bandwidth * Double(step.nanoseconds) / 1e9)
            let arrivalCutoff = now - .nanoseconds(baseRTT.nanoseconds / 2)
            while linkBytes > 0, let first = credit.first, first.usableAt <= arrivalCutoff {
                let n = min(linkBytes, first.bytes)
                try! window.receive(n, at: now)
                unread += n
                linkBytes -= n
                if n == first.bytes { credit.removeFirst() } else { credit[0].bytes -= n }
            }
            if stepIndex % stepsPerTurn != 0 { continue }
            let take = min(unread, appRate == .infinity ? unread : Int(appRate * Double(step.nanoseconds) / 1e9))
            if take > 0 {
                unread -= take
                delivered += take
                let tuning = ReceiveWindow.Tuning(minimumRoundTrip: knownRTT ?? baseRTT, maximum: maximum,
                                                  allowance: max(0, budget - window.size))
                if let increment = window.consume(take, at: now, tuning: tuning) {
                    credit.append((now + .nanoseconds(baseRTT.nanoseconds / 2), Int(increment)))
                }
            }
        }
        return delivered - start
    }
}

@Suite struct ReceiveWindowTests {
    /// 1 Gbit/s over 50 ms: 6.25 MB in flight fill the path; a 256 KiB window alone would move 42 Mbit/s.
    @Test func aWindowLimitedStreamGrowsUntilItFillsThePath() {
        var path = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(50))
        path.run(for: .seconds(2))
        let bdp = 125e6 * 0.05
        #expect(Double(path.window.size) >= 1.5 * bdp, "window \(path.window.size) after 2 s")
        #expect(path.window.size <= 16 << 20)
        // And then moves at the path's rate.
        let moved = path.run(for: .seconds(1))
        #expect(Double(moved) >= 0.9 * 125e6, "moved \(moved) bytes in the second after growing")
    }

    /// On a busy loopback an idle PING says 60 µs, but the credit loop under load takes 800 µs (both sides'
    /// work and scheduling) and a busy receiver takes what arrived in bursts: a peer that used all its credit
    /// shows that round trip when it gets more, and the window grows to cover it.
    @Test func aLoadedCreditLoopCountsLikeALongerPath() {
        var path = PathModel(initial: 256 << 10, bandwidth: 700e6, baseRTT: .microseconds(800))
        path.stepsPerTurn = 8
        path.run(for: .milliseconds(200), knownRTT: .microseconds(60))
        #expect(path.window.creditRoundTrip.map { $0 >= .microseconds(700) } == true)
        #expect(Double(path.window.size) >= 1.5 * 700e6 * 0.0008, "window \(path.window.size)")
        let moved = path.run(for: .milliseconds(100), knownRTT: .microseconds(60))
        #expect(Double(moved) >= 0.9 * 70e6)
    }

    @Test func growthStopsAtTheMaximum() {
        var path = PathModel(initial: 256 << 10, bandwidth: 1.25e9, baseRTT: .milliseconds(100))
        path.maximum = 4 << 20
        path.run(for: .seconds(3))
        #expect(path.window.size == 4 << 20)
    }

    @Test func aSlowReaderNeverGrowsItsWindow() {
        var path = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(50))
        path.appRate = 1e6   // 1 MB/s: 50 KB per round trip, well inside the initial window
        path.run(for: .seconds(5))
        #expect(path.window.size == 256 << 10)
        #expect(path.window.unconsumed <= 256 << 10)
    }

    /// An application (or a kernel socket buffer) that stalls, then works through its backlog: those bytes
    /// arrived long before, so taking them fast says nothing of the path and must not grow the window again.
    @Test func aBacklogTakenAfterAStallIsNotAFastPath() {
        var path = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(40))
        path.run(for: .seconds(1))   // fast: the window grows
        #expect(path.window.size >= 4 << 20)
        path.appRate = 0
        path.run(for: .seconds(1))   // stalled: a grown window's worth piles up unread
        #expect(path.window.unconsumed >= 4 << 20)
        path.appRate = 20e6
        path.run(for: .milliseconds(150))   // 3 MB of the backlog, taken at 20 MB/s
        #expect(path.window.unconsumed > 0, "the backlog is not all taken yet")
        // The stall took the window back down (to twice what the last epoch, half fast and half stalled,
        // averaged); taking the backlog at 20 MB/s (1.6 MB per 80 ms) would otherwise take it to megabytes.
        #expect(path.window.size <= 2 * (256 << 10), "window \(path.window.size) while taking a backlog")
    }

    /// What the window grows to is what the path needs, about twice the bandwidth-delay product: not the cap.
    @Test func aStreamLimitedByThePathStopsNearTwiceItsShare() {
        var path = PathModel(initial: 256 << 10, bandwidth: 12.5e6, baseRTT: .milliseconds(20))  // 100 Mbit/s
        path.run(for: .seconds(5))
        let bdp = 12.5e6 * 0.02   // 250 KB
        #expect(Double(path.window.size) <= 4 * bdp, "window \(path.window.size) for a 250 KB path")
        let moved = path.run(for: .seconds(1))
        #expect(Double(moved) >= 0.9 * 12.5e6)
    }

    /// When the stream's share of the link falls (others took it), its large window now only fills the link's
    /// queue: the round trip stretches, the share per minimum round trip falls, and the window shrinks back to
    /// about twice the new share — never below the initial window.
    @Test func queueingShrinksAGrownWindow() {
        var path = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(50))
        path.run(for: .seconds(2))
        let grown = path.window.size
        #expect(grown >= 8 << 20)
        path.bandwidth = 12.5e6   // a tenth: 625 KB per round trip
        path.run(for: .seconds(10))
        #expect(path.window.size <= 2 << 20, "window \(path.window.size), grown \(grown)")
        #expect(path.window.size >= 256 << 10)
        let moved = path.run(for: .seconds(1))
        #expect(Double(moved) >= 0.9 * 12.5e6, "the smaller window still fills the link")
    }

    @Test func theSessionBudgetBoundsGrowth() {
        var none = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(50))
        none.budget = 256 << 10
        none.run(for: .seconds(2))
        #expect(none.window.size == 256 << 10)

        var some = PathModel(initial: 256 << 10, bandwidth: 125e6, baseRTT: .milliseconds(50))
        some.budget = 1 << 20
        some.run(for: .seconds(2))
        #expect(some.window.size == 1 << 20)
    }

    @Test func withoutTuningTheWindowStaysFixed() {
        var w = ReceiveWindow(initial: 1000)
        try! w.receive(1000)
        #expect(w.consume(600, at: .uptimeNanoseconds(1)) == 600)
        #expect(w.consume(400, at: .uptimeNanoseconds(2)) == 400)
        #expect(w.size == 1000)
        #expect(w.granted == 1000)
    }

    /// A window that grew is credited in full: the sender never has more in flight than the largest window given.
    @Test func creditNeverExceedsTheWindow() {
        var path = PathModel(initial: 64 << 10, bandwidth: 125e6, baseRTT: .milliseconds(10))
        var largest = path.window.size
        for _ in 0..<200 {
            path.run(for: .milliseconds(10))
            largest = max(largest, path.window.size)
            #expect(path.window.granted + path.window.unconsumed <= largest)
        }
    }
}
