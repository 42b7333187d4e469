import NIOCore

/// Wrong passwords by client address: five are forgiven within a minute, then the address waits a minute before
/// its passwords are checked again (each check costs ~50 ms and 16 MiB of scrypt). Bounded: the oldest addresses
/// are forgotten first.
struct FailureThrottle {
    private var failures: [String: (count: Int, since: NIODeadline)] = [:]
    private let allowed = 5
    private let window: TimeAmount = .seconds(60)
    private let capacity = 10_000

    /// Seconds left to wait when `address` must wait, else nil.
    func blocked(_ address: String, now: NIODeadline = .now()) -> Int? {
        guard let entry = failures[address], entry.count >= allowed else { return nil }
        let left = window - (now - entry.since)
        return left > .zero ? Int((left.nanoseconds + 999_999_999) / 1_000_000_000) : nil
    }

    mutating func failed(_ address: String, now: NIODeadline = .now()) {
        if var entry = failures[address], now - entry.since < window {
            entry.count += 1
            failures[address] = entry
        } else {
            if failures.count >= capacity, let oldest = failures.min(by: { $0.value.since < $1.value.since }) {
                failures[oldest.key] = nil
            }
            failures[address] = (1, now)
        }
    }
}
