import Dispatch
import Foundation
import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#endif

/// Reloads the users file when it changes (checked every two seconds: size, modification time and inode, so an
/// editor's rename-over counts) and on SIGHUP. A file that does not parse is refused with its line number and
/// the rules in force stay; a good one is handed to `apply`.
final class UsersFileWatcher: @unchecked Sendable {  // its mutable state is behind `state`'s lock
    private let path: String
    private let logger: Logger
    private let apply: @Sendable ([UserRecord]) -> Void
    private let queue = DispatchQueue(label: "adit.users-file")
    private let state = NIOLockedValueBox(State())  // Dispatch sources are thread-safe to cancel

    private struct State {
        var stamp: Stamp?
        var timer: (any DispatchSourceTimer)?
        var signal: (any DispatchSourceSignal)?
    }

    private struct Stamp: Equatable {
        var inode: UInt64
        var size: Int64
        var modified: Int
        var modifiedNanoseconds: Int
    }

    init(path: String, logger: Logger, apply: @escaping @Sendable ([UserRecord]) -> Void) {
        self.path = path
        self.logger = logger
        self.apply = apply
    }

    func start() {
        let timer = DispatchSource.makeTimerSource(queue: queue)
        timer.schedule(deadline: .now() + 2, repeating: 2)
        timer.setEventHandler { [self] in self.check(force: false) }
        let hangup = SignalSources.make(signal: SIGHUP, queue: queue)
        hangup.setEventHandler { [self] in
            self.logger.notice("SIGHUP: reloading \(self.path)")
            self.check(force: true)
        }
        state.withLockedValue {
            $0.stamp = Self.stamp(path)
            $0.timer = timer
            $0.signal = hangup
        }
        timer.resume()
        hangup.resume()
    }

    func stop() {
        state.withLockedValue {
            $0.timer?.cancel()
            $0.signal?.cancel()
            $0.timer = nil
            $0.signal = nil
        }
    }

    /// Reload now (tests, and the SIGHUP handler).
    func check(force: Bool) {
        let stamp = Self.stamp(path)
        let changed = state.withLockedValue { state -> Bool in
            guard force || stamp != state.stamp else { return false }
            state.stamp = stamp
            return true
        }
        guard changed else { return }
        do {
            let users = try UsersFile.load(path: path)
            logger.notice("reloaded \(path): \(users.count) user(s); new streams follow the new rules")
            apply(users)
        } catch {
            logger.error("not reloading the users file: \(error); the rules loaded before stay in force")
        }
    }

    private static func stamp(_ path: String) -> Stamp? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return Stamp(inode: UInt64(info.st_ino), size: Int64(info.st_size), modified: info.st_mtim.tv_sec,
                     modifiedNanoseconds: info.st_mtim.tv_nsec)
    }
}
