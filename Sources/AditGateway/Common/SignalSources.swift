import Dispatch
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Dispatch signal sources that several parts of the process can hold for the same signal (SIGHUP: the users
/// file and the `--config` file both reload on it).
///
/// The signal's default action must be set aside once, before the first source: setting it again later (with
/// `signal(SIG_IGN)`) replaces the handler libdispatch installed on Linux, and every source goes quiet.
public enum SignalSources {
    private static let ignored = NIOLockedValueBox<Set<Int32>>([])

    public static func make(signal number: Int32, queue: DispatchQueue) -> any DispatchSourceSignal {
        ignored.withLockedValue { set in
            if set.insert(number).inserted { signal(number, SIG_IGN) }
        }
        return DispatchSource.makeSignalSource(signal: number, queue: queue)
    }
}
