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
    private let resets = NIOLockedValueBox<[ResetCode: Counter]>([:])
    private let authFailures = NIOLockedValueBox<[String: Counter]>([:])

    private let limitHits = NIOLockedValueBox<[String: Counter]>([:])

    /// A limit was reached: sessions (total, per address, per user), streams, a handshake that took too long.
    func limitHit(_ limit: String) {
        let counter = limitHits.withLockedValue { counters in
            if let existing = counters[limit] { return existing }
            let counter = Counter(label: "adit_limit_hits_total", dimensions: [("limit", limit)])
            counters[limit] = counter
            return counter
        }
        counter.increment()
    }

    /// A tunnel refused before its 101: `unauthorized` (no or wrong credentials) or `forbidden`.
    func authFailure(_ reason: String) {
        let counter = authFailures.withLockedValue { counters in
            if let existing = counters[reason] { return existing }
            let counter = Counter(label: "adit_auth_failures_total", dimensions: [("reason", reason)])
            counters[reason] = counter
            return counter
        }
        counter.increment()
    }

    public init() {}

    func resetCounter(_ code: ResetCode) -> Counter {
        resets.withLockedValue { counters in
            if let existing = counters[code] { return existing }
            let counter = Counter(label: "adit_stream_resets_total", dimensions: [("reason", code.metricLabel)])
            counters[code] = counter
            return counter
        }
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
        metrics.tunnelsOpen.decrement()
    }
}
