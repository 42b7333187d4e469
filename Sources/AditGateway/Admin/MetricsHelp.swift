/// swift-metrics has no place for a metric's description, so swift-prometheus's factory writes none, and its
/// registry refuses two help texts for one name. What a metric means is added here, as `# HELP` lines before
/// each family's `# TYPE` line, when `/metrics` is served.
enum MetricsHelp {
    static let texts: [String: String] = [
        "adit_tunnels_open": "Tunnels up now.",
        "adit_tunnels_opened_total": "Tunnels ever opened.",
        "adit_sessions_open": "Tunnels up now, by user (server; '-' without a users file).",
        "adit_streams_open": "Streams open now (updated once a second).",
        "adit_streams_opened_total": "Streams opened, by who opened them (local or peer).",
        "adit_stream_opens_total": "Streams this side asked for, by outcome (ok, or the reason they were refused).",
        "adit_stream_bytes_total": "Stream payload bytes through the tunnel, by direction.",
        "adit_stream_resets_total": "Streams ended by RESET, by reason.",
        "adit_datagrams_dropped_total": "UDP datagrams dropped before framing (queue full or too large).",
        "adit_compression_bytes_total": "Tunnel messages we compressed: bytes before and after.",
        "adit_compression_skipped_bytes_total": "Tunnel message bytes sent uncompressed (small, incompressible, or the link outruns zlib).",
        "adit_decompression_bytes_total": "Compressed tunnel messages received: bytes on the wire and inflated.",
        "adit_auth_failures_total": "Tunnels refused before the upgrade, by reason.",
        "adit_limit_hits_total": "Limits reached, by limit.",
        "adit_tunnel_reconnects_total": "Times the client dialled the tunnel again after losing it or failing to dial.",
        "adit_tunnel_rtt_seconds": "Round-trip time of the last keepalive PING of the tunnel (client), or of the most recent one answered (server).",
        "adit_receive_window_bytes": "Flow-control receive windows of all open streams together: what peers may send before our applications read it (windows grow with bandwidth x round trip, up to --window).",
    ]

    static func annotate(_ exposition: [UInt8]) -> [UInt8] {
        let text = String(decoding: exposition, as: UTF8.self)
        var out = ""
        out.reserveCapacity(text.utf8.count + 2048)
        for line in text.split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE ") {
                let name = line.dropFirst(7).split(separator: " ").first.map(String.init) ?? ""
                if let help = texts[name] { out += "# HELP \(name) \(help)\n" }
            }
            out += line
            out += "\n"
        }
        if out.hasSuffix("\n\n") { out.removeLast() }
        return Array(out.utf8)
    }
}
