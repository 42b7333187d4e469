import NIOCore

/// Picks how hard `auto` compresses bulk data, from what zlib and the connection are measured to do: a pure
/// value fed with every message a connection sends.
///
/// Whether compressing pays depends on the link as much as on the data. Through a 100 Mbit/s link the link is
/// the limit and every byte zlib saves is throughput; on loopback or a fast LAN zlib is the limit (level 5
/// runs at about 85 MB/s here, the link at over 1 GB/s) and compressing makes the tunnel slower. Neither can
/// be known in advance, and a socket that backs up may be backing up behind a peer that inflates slowly rather
/// than a slow link, so the chooser measures:
/// - per rung of a ladder (sending uncompressed, level 1, level 3, the configured level), zlib's own speed
///   (bytes per second of time spent in deflate) and ratio on this data, and the rate at which the connection
///   took bulk payload while on that rung;
/// - per epoch (at least `epochBytes` and `epochDuration` of bulk messages; a pause longer than `pause` starts
///   it again, an idle application says nothing), the payload rate and how busy zlib kept the event loop.
///
/// It starts at the configured level (a short or bursty transfer over a slow link must not go uncompressed while
/// the chooser learns; on a fast link the first epochs are the price), and tries a neighbouring rung only when
/// the measurements promise more. On the uncompressed rung it compresses one bulk message in `sampleEvery`
/// epochs at the lightest level, to keep zlib's speed and ratio on this data known:
/// - uncompressed → level 1 when zlib at level 1 is faster than the link is taking bytes now and the data
///   shrinks (a link that takes fewer bytes than zlib can make is the limit; compression then multiplies it);
/// - one rung lighter when zlib keeps the loop busy (it is the limit) and the socket did not back up for a few
///   epochs (a link that is the limit too would carry less of a lighter level's output); otherwise one rung
///   stronger, if zlib at that level (once measured) keeps up with what moves now (the link or the application
///   is the limit: fewer wire bytes for the same rate, or more payload through the same link).
/// A try lasts one epoch and is kept unless it moved less than `tolerance` of the rung before (its epoch then
/// counts as a measurement, and the next move may follow at once); a try that lost is not repeated for twice as
/// many epochs as the last time (up to `longestHold`). Data that does not shrink goes uncompressed on any rung
/// (the caller's advisor decides that per message); an epoch of it measures the uncompressed rung, and when zlib
/// later turns out to be the limit at far less than that rate, the try goes straight to uncompressed. So on a
/// fast link bulk data goes uncompressed after three epochs (a few MiB; one after data that did not shrink), at
/// the cost of the samples, and on a slow one the level stays at the strongest that keeps up.
public struct CompressionEffortChooser: Sendable, Equatable {
    public struct Tuning: Sendable, Equatable {
        /// Messages at least this large count as bulk; smaller ones are interactive and do not measure anything.
        public var bulkMessageSize = 16 << 10
        public var epochBytes = 1 << 20
        public var epochDuration: TimeAmount = .milliseconds(20)
        public var pause: TimeAmount = .milliseconds(100)
        /// zlib is the limit when it takes more than this fraction of an epoch's time, and the socket did not
        /// back up for this many epochs.
        public var busy = 0.7
        public var quietEpochs = 4
        /// A rung is tried when its measured zlib speed (and, from uncompressed, its ratio) promise this factor.
        public var gain = 1.2
        /// A try is kept while it moves at least this fraction of what the rung before moved.
        public var tolerance = 0.95
        /// On the uncompressed rung, one bulk message in this many epochs is compressed as a sample.
        public var sampleEvery = 4
        public var longestHold = 128
        public init() {}
    }

    /// Messages smaller than this teach the chooser nothing (too short to time zlib on); callers need not
    /// report them.
    public static let smallestMeasured = 4096

    /// zlib levels, weakest first; 0 sends bulk messages as they are.
    public let ladder: [Int]
    public let tuning: Tuning
    /// The rung in use.
    public private(set) var rung: Int
    /// Bulk payload per second last measured on each rung.
    public private(set) var rates: [Double?]
    /// zlib's speed (input bytes per second spent in deflate) and ratio per rung, smoothed.
    public private(set) var speeds: [Double?]
    public private(set) var ratios: [Double?]

    /// The epoch each rung's rate was measured in.
    private var measuredAt: [Int]
    /// The rung a try started from, while the try's epoch runs.
    private var trialFrom: Int?
    /// Per rung: no try of it before this epoch, and how long the next wait after a lost try is.
    private var blockedUntil: [Int]
    private var blockLength: [Int]
    private var epoch = 0
    private var sampleDue = true
    private var epochStart: NIODeadline?
    private var lastBulk: NIODeadline?
    private var epochBytesSoFar = 0
    /// Bulk bytes of this epoch that went uncompressed on a compressing rung: the data did not shrink, and the
    /// caller's advisor sent it as it was.
    private var epochUncompressedBytes = 0
    private var epochDeflateNanoseconds: Int64 = 0
    /// Whether the socket backed up during this epoch, and how many epochs ended since it last did.
    private var epochBackedUp = false
    private var epochsSinceBackedUp = Int.max / 2

    /// The ladder for a configured `level`: uncompressed, level 1, level 3 when between, and `level`.
    public init(level: Int, tuning: Tuning = .init()) {
        var ladder = [0]
        for candidate in [1, 3, level] where candidate <= level && candidate > ladder.last! { ladder.append(candidate) }
        self.init(ladder: ladder, tuning: tuning)
    }

    public init(ladder: [Int], tuning: Tuning = .init()) {
        precondition(ladder.count >= 2 && ladder[0] == 0 && ladder.dropFirst().allSatisfy { $0 > 0 })
        self.ladder = ladder
        self.tuning = tuning
        self.rung = ladder.count - 1
        self.rates = Array(repeating: nil, count: ladder.count)
        self.speeds = rates
        self.ratios = rates
        self.measuredAt = Array(repeating: 0, count: ladder.count)
        self.blockedUntil = Array(repeating: 0, count: ladder.count)
        self.blockLength = Array(repeating: 2, count: ladder.count)
    }

    /// The zlib level the rung stands for (0: bulk goes uncompressed).
    public var level: Int { ladder[rung] }

    /// The zlib level for the next message of `size` bytes; 0 sends it as it is. On the uncompressed rung only a
    /// due sample is compressed (one bulk message at the lightest level). Smaller messages go as they are there
    /// too: the rung says the link outruns zlib, and in a bulk transfer they are mostly the tail ends of its
    /// writes (measured on loopback: 5 % of the messages, yet compressing them cost 10 % more CPU than `off`).
    public mutating func level(forMessageOf size: Int) -> Int {
        if rung > 0 { return ladder[rung] }
        if sampleDue && size >= tuning.bulkMessageSize {
            sampleDue = false
            return ladder[1]
        }
        return 0
    }

    /// Records a message of `size` bytes handed down at `now`: `compressed` is what zlib made of it at `level`
    /// in `deflateTime` (nil: it went uncompressed). Returns true when the rung changed.
    public mutating func record(messageSize size: Int, compressed: (level: Int, size: Int, deflateTime: TimeAmount)?,
                                at now: NIODeadline) -> Bool {
        if let compressed, size >= Self.smallestMeasured, let index = ladder.firstIndex(of: compressed.level) {
            let nanoseconds = max(compressed.deflateTime.nanoseconds, 1)
            Self.smooth(&speeds[index], Double(size) * 1e9 / Double(nanoseconds))
            Self.smooth(&ratios[index], Double(size) / Double(max(compressed.size, 1)))
            epochDeflateNanoseconds += compressed.deflateTime.nanoseconds
        }
        guard size >= tuning.bulkMessageSize else { return false }
        defer { lastBulk = now }
        guard let start = epochStart, let last = lastBulk, now - last <= tuning.pause else {
            epochStart = now
            epochBytesSoFar = 0
            epochUncompressedBytes = 0
            epochDeflateNanoseconds = 0
            epochBackedUp = false
            return false
        }
        epochBytesSoFar += size
        if compressed == nil && rung > 0 { epochUncompressedBytes += size }
        let elapsed = now - start
        guard epochBytesSoFar >= tuning.epochBytes, elapsed >= tuning.epochDuration else { return false }
        let rate = Double(epochBytesSoFar) * 1e9 / Double(elapsed.nanoseconds)
        let busy = Double(epochDeflateNanoseconds) / Double(elapsed.nanoseconds)
        let backedUp = epochBackedUp
        let mostlyUncompressed = epochUncompressedBytes * 4 > epochBytesSoFar * 3
        epochStart = now
        epochBytesSoFar = 0
        epochUncompressedBytes = 0
        epochDeflateNanoseconds = 0
        epochBackedUp = false
        if mostlyUncompressed {
            measureUncompressed(rate: rate)
            return false
        }
        return finishEpoch(rate: rate, busy: busy, backedUp: backedUp)
    }

    /// The socket could not take more (the channel became unwritable): during this epoch the link, or the peer
    /// behind it, was the limit, so a lighter level cannot move more, and a stronger one may.
    public mutating func noteBackedUp() {
        epochBackedUp = true
    }

    private static func smooth(_ value: inout Double?, _ sample: Double) {
        value = value.map { ($0 * 3 + sample) / 4 } ?? sample
    }

    /// An epoch on a compressing rung in which the data did not shrink, so the advisor sent most of it as it
    /// was: it measured how fast the connection takes uncompressed bytes, which is the uncompressed rung's rate.
    /// It says nothing about the rung in use (nor does a socket that backed up at that rate say the link limits
    /// a compressing rung), and a try running through it stays undecided.
    private mutating func measureUncompressed(rate: Double) {
        epoch += 1
        epochsSinceBackedUp += 1
        if epoch % tuning.sampleEvery == 0 { sampleDue = true }
        rates[0] = rate
        measuredAt[0] = epoch
    }

    private mutating func finishEpoch(rate: Double, busy: Double, backedUp: Bool) -> Bool {
        epoch += 1
        epochsSinceBackedUp = backedUp ? 0 : epochsSinceBackedUp + 1
        if epoch % tuning.sampleEvery == 0 { sampleDue = true }
        rates[rung] = rate
        measuredAt[rung] = epoch
        if let from = trialFrom {
            trialFrom = nil
            if let before = rates[from], rate < before * tuning.tolerance {
                // The try lost: back, and wait twice as long as last time before trying this rung again.
                blockedUntil[rung] = epoch + blockLength[rung]
                blockLength[rung] = min(blockLength[rung] * 2, tuning.longestHold)
                rung = from
                return true
            }
            // The try won, and its epoch measured this rung like any other: the next move may start now.
            blockLength[rung] = 2
        }
        // A socket that backed up in any of the last few epochs says the link is (at times) the limit: a
        // lighter level would then carry less payload through it, and a try of one costs an epoch at that rate.
        let linkLimited = epochsSinceBackedUp < tuning.quietEpochs
        guard let next = candidate(rate: rate, busy: busy, backedUp: linkLimited), epoch >= blockedUntil[next] else {
            return false
        }
        // A rung measured recently at well below what moves now is not worth an epoch (on a slow link, one
        // uncompressed epoch costs as much as four compressed ones); after `longestHold` epochs it may be.
        if let known = rates[next], epoch - measuredAt[next] < tuning.longestHold, known < rate * tuning.tolerance {
            return false
        }
        trialFrom = rung
        rung = next
        return true
    }

    /// The neighbouring rung the measurements say may move more, if any.
    private func candidate(rate: Double, busy: Double, backedUp: Bool) -> Int? {
        if rung == 0 {
            // Worth compressing when zlib outruns what the link takes now and the data shrinks enough that
            // the link would carry more of it.
            guard let speed = speeds[1], let ratio = ratios[1] else { return nil }
            return speed > rate * tuning.gain && ratio > tuning.gain ? 1 : nil
        }
        if busy > tuning.busy && !backedUp {
            // zlib is the limit: a lighter level may move more (uncompressed: only a try can tell). When the
            // connection recently took uncompressed bytes far faster than this (data that did not shrink went
            // as it was), the try skips the rungs between.
            if let uncompressed = rates[0], epoch - measuredAt[0] < tuning.longestHold,
               uncompressed > rate * tuning.gain, epoch >= blockedUntil[0] {
                return 0
            }
            let lighter = rung - 1
            return lighter == 0 || (speeds[lighter].map { $0 > rate * tuning.gain } ?? true) ? lighter : nil
        }
        if rung + 1 < ladder.count {
            // The link or the application is the limit: a stronger level, if zlib at that level (once measured)
            // keeps up with what moves now; the try itself tells whether it moves as much.
            let stronger = rung + 1
            return speeds[stronger].map { $0 > rate / tuning.tolerance } ?? true ? stronger : nil
        }
        return nil
    }
}
