import NIOConcurrencyHelpers

/// How many tunnels may be open at once: in all, from one client address, and for one user. A slot is taken when
/// a tunnel is admitted (before its 101: over a limit it is answered 429) and given back when its connection
/// closes. One client address once held 13,151 idle tunnels and 938 MiB of the server.
public struct SessionLimits: Sendable, Equatable {
    public var total: Int
    public var perAddress: Int
    /// For every user without a `limits.sessions` of their own (and for the anonymous user).
    public var perUser: Int

    public init(total: Int = 10_000, perAddress: Int = 100, perUser: Int = 100) {
        self.total = total
        self.perAddress = perAddress
        self.perUser = perUser
    }
}

/// The counts behind `SessionLimits`, shared by every event loop.
final class SessionCounter: Sendable {
    private struct Counts {
        var total = 0
        var byAddress: [String: Int] = [:]
        var byUser: [String: Int] = [:]
    }

    private let limits: SessionLimits
    private let counts = NIOLockedValueBox(Counts())

    init(limits: SessionLimits) {
        self.limits = limits
    }

    /// Takes a slot, or says which limit is reached (and nothing is taken).
    func reserve(address: String, user: String, userLimit: Int?) -> (limit: String, text: String)? {
        counts.withLockedValue { counts in
            if counts.total >= limits.total {
                return ("total", "the server already carries \(limits.total) tunnels, its --max-sessions")
            }
            if counts.byAddress[address, default: 0] >= limits.perAddress {
                return ("per_address", "\(address) already has \(limits.perAddress) tunnels open, the --max-sessions-per-address")
            }
            let perUser = userLimit ?? limits.perUser
            if counts.byUser[user, default: 0] >= perUser {
                return ("per_user", "user \(user) already has \(perUser) tunnels open, their limit")
            }
            counts.total += 1
            counts.byAddress[address, default: 0] += 1
            counts.byUser[user, default: 0] += 1
            return nil
        }
    }

    func release(address: String, user: String) {
        counts.withLockedValue { counts in
            counts.total -= 1
            counts.byAddress[address, default: 1] -= 1
            if counts.byAddress[address] == 0 { counts.byAddress[address] = nil }
            counts.byUser[user, default: 1] -= 1
            if counts.byUser[user] == 0 { counts.byUser[user] = nil }
        }
    }
}
