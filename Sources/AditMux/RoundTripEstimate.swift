import NIOCore

/// The session's round trip as measured by PING and PONG. Its minimum is the path without queueing (what the
/// receive windows scale to, `ReceiveWindow`); the latest is shown in metrics and on the status page.
public struct RoundTripEstimate: Sendable, Equatable {
    public private(set) var minimum: TimeAmount?
    public private(set) var latest: TimeAmount?
    public private(set) var samples = 0

    public init() {}

    public mutating func add(_ sample: TimeAmount) {
        guard sample.nanoseconds > 0 else { return }
        latest = sample
        minimum = min(minimum ?? sample, sample)
        samples += 1
    }
}
