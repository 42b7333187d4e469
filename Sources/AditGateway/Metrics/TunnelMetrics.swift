import AditMux
import AditWebSocket
import CoreMetrics
import NIOConcurrencyHelpers
import NIOCore

/// The process's metrics (swift-metrics; exported by `MetricsEndpoint` when `--metrics` is given). Sessions keep
/// plain totals on their event loop (`MuxStatistics`) and `SessionMetricsExporter` adds the deltas here once a
/// second, so the data path never touches an atomic.
public final class TunnelMetrics: Sendable {
    let tunnelsOpened = Counter(label: "adit_tunnels_opened_total")
    let tunnelsOpen = Meter(label: "adit_tunnels_open")
    let streamsOpen = Meter(label: "adit_streams_open")
    let streamsOpenedLocally = Counter(label: "adit_streams_opened_total", dimensions: [("origin", "local")])
    let streamsOpenedByPeer = Counter(label: "adit_streams_opened_total", dimensions: [("origin", "peer")])
    let bytesSent = Counter(label: "adit_stream_bytes_total", dimensions: [("direction", "sent")])
    let bytesReceived = Counter(label: "adit_stream_bytes_total", dimensions: [("direction", "received")])
    /// UDP datagrams dropped before they were framed (their flow's queue was full, or they did not fit).
    let datagramsDropped = Counter(label: "adit_datagrams_dropped_total")
    /// permessage-deflate: bytes of the messages we compressed, before and after, and bytes sent as they were.
    let compressionInput = Counter(label: "adit_compression_bytes_total", dimensions: [("stage", "before")])
    let compressionOutput = Counter(label: "adit_compression_bytes_total", dimensions: [("stage", "after")])
    let compressionSkipped = Counter(label: "adit_compression_skipped_bytes_total")
    /// Compressed bytes received, and what they inflated to.
    let inflateInput = Counter(label: "adit_decompression_bytes_total", dimensions: [("stage", "before")])
    let inflateOutput = Counter(label: "adit_decompression_bytes_total", dimensions: [("stage", "after")])
    /// The client dialled again (after losing its tunnel or failing a dial).
    let reconnects = Counter(label: "adit_tunnel_reconnects_total")
    /// The round trip of the last keepalive PING answered (on the server: of any session).
    let roundTrip = Gauge(label: "adit_tunnel_rtt_seconds")
    /// Receive windows of all open streams together: what the peers may send before our applications read it.
    let receiveWindows = Meter(label: "adit_receive_window_bytes")
    /// Labelled families whose label values appear at run time (reasons, limits, users, outcomes): one metric
    /// per value, made the first time it is seen.
    private let labelled = NIOLockedValueBox<[String: Counter]>([:])
    private let sessionsByUser = NIOLockedValueBox<[String: Meter]>([:])

    private func counter(_ label: String, _ dimension: String, _ value: String) -> Counter {
        labelled.withLockedValue { counters in
            let key = label + "\u{0}" + value
            if let existing = counters[key] { return existing }
            let counter = Counter(label: label, dimensions: [(dimension, value)])
            counters[key] = counter
            return counter
        }
    }

    /// A server session began (+1) or ended (-1) for `user` ("-" without a users file). Users come from the
    /// operator's file, so the label's values are bounded.
    func session(user: String, delta: Double) {
        let meter = sessionsByUser.withLockedValue { meters in
            if let existing = meters[user] { return existing }
            let meter = Meter(label: "adit_sessions_open", dimensions: [("user", user)])
            meters[user] = meter
            return meter
        }
        meter.increment(by: delta)
    }

    /// A stream this side asked for was answered: `ok`, or the reason it was refused (a reset code's label,
    /// `no_tunnel`, `tunnel_closed`).
    func streamOpen(outcome: String) {
        counter("adit_stream_opens_total", "outcome", outcome).increment()
    }

    /// A limit was reached: sessions (total, per address, per user), streams, a handshake that took too long.
    func limitHit(_ limit: String) {
        counter("adit_limit_hits_total", "limit", limit).increment()
    }

    /// A tunnel refused before its 101: `unauthorized` (no or wrong credentials) or `forbidden`.
    func authFailure(_ reason: String) {
        counter("adit_auth_failures_total", "reason", reason).increment()
    }

    public init() {}

    func resetCounter(_ code: ResetCode) -> Counter {
        counter("adit_stream_resets_total", "reason", code.metricLabel)
    }
}

extension ResetCode {
    var metricLabel: String {
        switch self {
        case .closed: return "closed"
        case .refused: return "refused"
        case .unreachable: return "unreachable"
        case .timedOut: return "timed_out"
        case .notAllowed: return "not_allowed"
        case .resourceLimit: return "resource_limit"
        case .protocolError: return "protocol_error"
        case .flowControlError: return "flow_control_error"
        case .internalError: return "internal_error"
        }
    }
}

/// Copies one session's totals into `TunnelMetrics` every second and once more when it closes.
final class SessionMetricsExporter {
    private let metrics: TunnelMetrics
    private weak var session: MuxHandler?
    private weak var webSocket: WebSocketConnectionHandler?
    private var exported = MuxStatistics()
    private var exportedCompression = CompressionStatistics()
    private var exportedStreams = 0
    private var exportedWindows = 0
    private var exportedRoundTrip: TimeAmount?
    private var task: RepeatedTask?

    init(metrics: TunnelMetrics, session: MuxHandler, webSocket: WebSocketConnectionHandler?, eventLoop: any EventLoop) {
        self.metrics = metrics
        self.session = session
        self.webSocket = webSocket
        metrics.tunnelsOpened.increment()
        metrics.tunnelsOpen.increment()
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        task = eventLoop.scheduleRepeatedTask(initialDelay: .seconds(1), delay: .seconds(1)) { _ in
            bound.value.export()
        }
    }

    func export() {
        guard let session else { return }
        let now = session.statistics
        metrics.bytesSent.increment(by: now.bytesSent - exported.bytesSent)
        metrics.bytesReceived.increment(by: now.bytesReceived - exported.bytesReceived)
        metrics.datagramsDropped.increment(by: now.datagramsDropped - exported.datagramsDropped)
        metrics.streamsOpenedLocally.increment(by: now.streamsOpened - exported.streamsOpened)
        metrics.streamsOpenedByPeer.increment(by: now.streamsAccepted - exported.streamsAccepted)
        for (code, count) in now.resets where count != exported.resets[code, default: 0] {
            metrics.resetCounter(code).increment(by: count - exported.resets[code, default: 0])
        }
        exported = now
        if let compression = webSocket?.compressionStatistics {
            let before = exportedCompression
            metrics.compressionInput.increment(by: compression.bytesBeforeCompression - before.bytesBeforeCompression)
            metrics.compressionOutput.increment(by: compression.bytesAfterCompression - before.bytesAfterCompression)
            metrics.compressionSkipped.increment(by: compression.bytesUncompressed - before.bytesUncompressed)
            metrics.inflateInput.increment(by: compression.bytesBeforeInflating - before.bytesBeforeInflating)
            metrics.inflateOutput.increment(by: compression.bytesAfterInflating - before.bytesAfterInflating)
            exportedCompression = compression
        }
        if let rtt = session.lastRoundTrip, rtt != exportedRoundTrip {
            metrics.roundTrip.record(Double(rtt.nanoseconds) / 1e9)
            exportedRoundTrip = rtt
        }
        let windows = session.receiveWindowTotal
        if windows != exportedWindows {
            metrics.receiveWindows.increment(by: Double(windows - exportedWindows))
            exportedWindows = windows
        }
        let streams = session.streamCount
        if streams != exportedStreams {
            metrics.streamsOpen.increment(by: Double(streams - exportedStreams))
            exportedStreams = streams
        }
    }

    /// The session ended: last totals, and its tunnel and streams leave the gauges.
    func close() {
        export()
        task?.cancel()
        task = nil
        metrics.streamsOpen.decrement(by: Double(exportedStreams))
        exportedStreams = 0
        metrics.receiveWindows.decrement(by: Double(exportedWindows))
        exportedWindows = 0
        metrics.tunnelsOpen.decrement()
    }
}
