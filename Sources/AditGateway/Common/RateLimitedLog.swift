import Logging
import NIOConcurrencyHelpers

/// Log lines about refusals (of tunnels, streams, listeners), at most `burst` a second across the process: a peer
/// sending 300,000 denied OPENs once wrote 39 MB of log. Lines over the rate are counted and the count reported
/// with the next line that gets through.
public final class RateLimitedLog: Sendable {
    private struct State {
        var windowStart: NIODeadline = .now()
        var inWindow = 0
        var suppressed = 0
    }

    private let burst: Int
    private let state = NIOLockedValueBox(State())

    public init(burst: Int = 20) {
        self.burst = burst
    }

    public func log(_ logger: Logger, level: Logger.Level = .notice, _ message: @autoclosure () -> String,
                    metadata: Logger.Metadata = [:]) {
        let (allowed, suppressed) = state.withLockedValue { state -> (Bool, Int) in
            let now = NIODeadline.now()
            if now - state.windowStart >= .seconds(1) {
                state.windowStart = now
                state.inWindow = 0
            }
            guard state.inWindow < burst else {
                state.suppressed += 1
                return (false, 0)
            }
            state.inWindow += 1
            let suppressed = state.suppressed
            state.suppressed = 0
            return (true, suppressed)
        }
        guard allowed else { return }
        var metadata = metadata
        if suppressed > 0 { metadata["suppressed_before"] = "\(suppressed)" }
        logger.log(level: level, "\(message())", metadata: metadata)
    }
}

import NIOCore
