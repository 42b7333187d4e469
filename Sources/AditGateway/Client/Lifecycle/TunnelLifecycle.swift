import NIOCore

/// The life of the client's tunnel, pure: which server is dialled, when, and what happens to connections that
/// wait for it. `TunnelManager` feeds it events and carries out the actions it returns (dial, arm a timer,
/// open the waiting connections, close a session), so every race can be tested without sockets.
///
/// Each dial gets a number, and the session it produces keeps it: an event about an older dial or session (a
/// drained tunnel closing late, a dial that lost a race with GOAWAY) is recognised as stale and cannot start a
/// second dial or knock the current tunnel down.
public struct TunnelLifecycle: Sendable, Equatable {
    /// One dial, and the session it produced.
    public typealias Attempt = Int

    public enum State: Sendable, Equatable {
        case idle
        /// A dial to `servers[server]` is under way.
        case dialing(attempt: Attempt, server: Int)
        /// The tunnel of `attempt` is up.
        case ready(attempt: Attempt, server: Int)
        /// Waiting before the next dial, which will be `attempt`, to `servers[server]`.
        case backoff(attempt: Attempt, server: Int)
        /// A dial failed in a way retrying cannot fix (credentials refused, wrong path): stopped with `reason`.
        case failed(reason: String)
        case stopped
    }

    public enum Action: Sendable, Equatable {
        case dial(attempt: Attempt, server: Int)
        case scheduleRetry(attempt: Attempt, server: Int, after: TimeAmount)
        /// The tunnel of `attempt` is up: open the connections that waited for it.
        case openWaiting(attempt: Attempt)
        /// Fail the connections that wait, saying why; new ones fail at once while the state stays the same.
        case failWaiting(reason: String)
        /// Close a session nobody needs (it came up after we moved on).
        case closeSession(attempt: Attempt)
        /// Start a graceful drain of these sessions (shutdown).
        case drainSessions([Attempt])
        /// Tell the user; `level` of importance, so that a long outage does not flood the log.
        case log(LogLine)
    }

    public struct LogLine: Sendable, Equatable {
        public enum Level: Sendable, Equatable { case debug, notice, warning, error }
        public var level: Level
        public var message: String
    }

    public struct Settings: Sendable, Equatable {
        public var servers: [String]
        public var reconnectMinimum: TimeAmount = .milliseconds(500)
        public var reconnectMaximum: TimeAmount = .seconds(15)

        public init(servers: [String]) {
            self.servers = servers
        }
    }

    public let settings: Settings
    public private(set) var state: State = .idle
    /// Sessions that were current once and now drain (GOAWAY); they end on their own.
    public private(set) var draining: Set<Attempt> = []
    private var nextAttempt: Attempt = 1
    /// Failed dials since the last tunnel was up, over every server.
    public private(set) var failuresInARow = 0
    /// The last reason a dial failed or a tunnel was lost: what a waiting connection is told.
    public private(set) var lastFailure: String?
    private var wasEverUp = false

    public init(settings: Settings) {
        precondition(!settings.servers.isEmpty, "a tunnel needs at least one server")
        self.settings = settings
    }

    /// The tunnel is up and takes new streams.
    public var readyAttempt: Attempt? {
        if case .ready(let attempt, _) = state { return attempt }
        return nil
    }

    /// Sessions still alive in some form (current or draining): shutdown waits for them.
    public var liveSessions: [Attempt] {
        var all = Array(draining).sorted()
        switch state {
        case .ready(let attempt, _), .dialing(let attempt, _): all.append(attempt)
        default: break
        }
        return all
    }

    // MARK: Events

    public mutating func start() -> [Action] {
        guard state == .idle else { return [] }
        return dial(server: 0)
    }

    /// A dial's tunnel is up (both HELLOs exchanged).
    public mutating func sessionReady(_ attempt: Attempt) -> [Action] {
        guard case .dialing(attempt, let server) = state else {
            // Stale: we moved on (stopped, or another dial won). Nobody will use it.
            return [.closeSession(attempt: attempt)]
        }
        state = .ready(attempt: attempt, server: server)
        let again = wasEverUp || failuresInARow > 0
        wasEverUp = true
        failuresInARow = 0
        lastFailure = nil
        return [.log(.init(level: .notice, message: "tunnel to \(settings.servers[server]) is up\(again ? " again" : "")")),
                .openWaiting(attempt: attempt)]
    }

    /// A dial failed before its tunnel was up. `permanent`: retrying cannot help (the user must fix something).
    public mutating func dialFailed(_ attempt: Attempt, reason: String, permanent: Bool = false) -> [Action] {
        if draining.remove(attempt) != nil { return [] }  // shut down while it was dialled
        guard case .dialing(attempt, let server) = state else { return [] }
        lastFailure = reason
        if permanent {
            state = .failed(reason: reason)
            return [.log(.init(level: .error, message: "cannot use the tunnel server \(settings.servers[server]): \(reason)")),
                    .failWaiting(reason: reason)]
        }
        failuresInARow += 1
        let next = (server + 1) % settings.servers.count
        // Every server gets one try in turn; only after a whole round does the wait grow.
        let round = (failuresInARow - 1) / settings.servers.count
        let delay: TimeAmount
        if failuresInARow % settings.servers.count != 0 && settings.servers.count > 1 {
            delay = .zero
        } else {
            delay = min(settings.reconnectMinimum * (1 << min(round, 20)), settings.reconnectMaximum)
        }
        let level: LogLine.Level = failuresInARow <= 3 || failuresInARow % 10 == 0 ? .warning : .debug
        let retry = next == server ? "retrying in \(Self.seconds(delay))"
            : "trying \(settings.servers[next])\(delay > .zero ? " in \(Self.seconds(delay))" : " next")"
        let attemptNext = takeAttempt()
        state = .backoff(attempt: attemptNext, server: next)
        return [.log(.init(level: level, message: "cannot reach the tunnel server \(settings.servers[server]): \(reason); \(retry)")),
                .scheduleRetry(attempt: attemptNext, server: next, after: delay)]
    }

    /// The retry timer of `attempt` fired.
    public mutating func retryDue(_ attempt: Attempt) -> [Action] {
        guard case .backoff(attempt, let server) = state else { return [] }
        state = .dialing(attempt: attempt, server: server)
        return [.log(.init(level: .debug, message: "dialling \(settings.servers[server])")),
                .dial(attempt: attempt, server: server)]
    }

    /// The server of the current tunnel asked us to go (GOAWAY): the session drains, a new one is dialled at once
    /// so new connections do not wait for the old streams.
    public mutating func goAwayReceived(_ attempt: Attempt, reason: String) -> [Action] {
        guard case .ready(attempt, let server) = state else { return [] }
        draining.insert(attempt)
        return [.log(.init(level: .notice, message: "the server is draining the tunnel (\(reason)); new connections go to a new tunnel"))]
            + dial(server: server)
    }

    /// A session ended (its tunnel closed), whatever it was doing.
    public mutating func sessionClosed(_ attempt: Attempt, reason: String) -> [Action] {
        if draining.remove(attempt) != nil { return [] }
        switch state {
        case .dialing(attempt, _):
            // Closed before it was up: a failed dial.
            return dialFailed(attempt, reason: reason)
        case .ready(attempt, let server):
            lastFailure = reason
            let attemptNext = takeAttempt()
            state = .backoff(attempt: attemptNext, server: server)
            return [.log(.init(level: .warning, message: "tunnel lost: \(reason); reconnecting in \(Self.seconds(settings.reconnectMinimum))")),
                    .scheduleRetry(attempt: attemptNext, server: server, after: settings.reconnectMinimum)]
        default:
            return []
        }
    }

    /// Shut down: no more dials; the waiting connections are refused; live sessions drain.
    public mutating func stop() -> [Action] {
        guard state != .stopped else { return [] }
        let live = liveSessions
        state = .stopped
        draining = Set(live)
        var actions: [Action] = [.failWaiting(reason: "the client is shutting down")]
        if !live.isEmpty { actions.append(.drainSessions(live)) }
        return actions
    }

    /// Whether a connection that finds no tunnel should wait for one (or fail at once, and why).
    public var waitRefusal: String? {
        switch state {
        case .failed(let reason): return reason
        case .stopped: return "the client is shutting down"
        default: return nil
        }
    }

    // MARK: Helpers

    private mutating func takeAttempt() -> Attempt {
        defer { nextAttempt += 1 }
        return nextAttempt
    }

    private mutating func dial(server: Int) -> [Action] {
        let attempt = takeAttempt()
        state = .dialing(attempt: attempt, server: server)
        return [.dial(attempt: attempt, server: server)]
    }

    static func seconds(_ t: TimeAmount) -> String {
        let s = Double(t.nanoseconds) / 1e9
        return s < 10 ? "\((s * 10).rounded() / 10) s" : "\(Int(s)) s"
    }
}
