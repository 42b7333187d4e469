import AditMux
import AditWebSocket
import NIOCore

/// What the admin listener's `/status` page shows and `/status.json` returns: the process, whether it is ready,
/// and each tunnel session with its traffic. Built on demand from the sessions' own counters (each read on its
/// event loop), so keeping it costs the data path nothing.
public struct AdminStatus: Codable, Sendable, Equatable {
    public struct Session: Codable, Sendable, Equatable {
        /// The user (server; "-" without a users file) or the server URL (client).
        public var identity: String
        public var peer: String
        public var uptimeSeconds: Double
        /// From the last keepalive PING; nil before the first answer.
        public var roundTripMilliseconds: Double?
        /// The smallest PING round trip, which receive windows are sized from; nil before the first answer.
        public var minimumRoundTripMilliseconds: Double?
        /// Receive windows of the session's streams together (they grow with bandwidth × round trip).
        public var receiveWindowBytes: Int
        public var streams: Int
        public var listeners: Int
        public var bytesSent: Int
        public var bytesReceived: Int
        /// Bytes before ÷ after compression of what we sent; nil when nothing was compressed.
        public var compressionRatio: Double?
        /// "up", or "draining" after a GOAWAY either way.
        public var state: String
    }

    /// "server" or "client".
    public var role: String
    public var version: String
    public var uptimeSeconds: Double
    public var ready: Bool
    /// One phrase: "listening", "draining", "tunnel up", "dialing", "backing off", …
    public var state: String
    /// Lines about the configuration: the listen address and policy, or the client's fronts.
    public var details: [String]
    public var sessions: [Session]

    /// One session as seen now; call on the session's event loop.
    static func session(mux: MuxHandler, webSocket: WebSocketConnectionHandler?, identity: String, peer: String,
                        openedAt: NIODeadline) -> Session {
        let statistics = mux.statistics
        let compression = webSocket?.compressionStatistics
        var ratio: Double? = nil
        if let compression, compression.bytesAfterCompression > 0 {
            ratio = Double(compression.bytesBeforeCompression) / Double(compression.bytesAfterCompression)
        }
        let state: String
        switch mux.sessionState {
        case .closed: state = "closed"
        case .draining: state = "draining"
        case .awaitingHello: state = "starting"
        case .active: state = "up"
        }
        return Session(identity: identity, peer: peer,
                       uptimeSeconds: Double((NIODeadline.now() - openedAt).nanoseconds) / 1e9,
                       roundTripMilliseconds: mux.lastRoundTrip.map { Double($0.nanoseconds) / 1e6 },
                       minimumRoundTripMilliseconds: mux.roundTrip.minimum.map { Double($0.nanoseconds) / 1e6 },
                       receiveWindowBytes: mux.receiveWindowTotal,
                       streams: mux.streamCount, listeners: mux.listenerCount,
                       bytesSent: statistics.bytesSent, bytesReceived: statistics.bytesReceived,
                       compressionRatio: ratio, state: state)
    }
}

/// A program the admin listener reports on (`AditServer`, `AditClient`).
public protocol AdminStatusSource: AnyObject, Sendable {
    /// `/readyz`: the server listens and is not draining; the client's tunnel is up.
    func isReady() async -> Bool
    func adminStatus() async -> AdminStatus
}
