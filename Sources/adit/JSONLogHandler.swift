import Logging
import NIOConcurrencyHelpers

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// `--log-format json`: one JSON object per line on standard error, for log collectors (Loki, Elasticsearch,
/// CloudWatch) that parse rather than grep. Fields: `time` (UTC, milliseconds), `level`, `logger`, `message`,
/// then the metadata (peer, user, stream, target, bytes…) as top-level keys. swift-log ships only a text
/// handler, and the ecosystem's JSON handlers are not in our mirror; this one is small and writes each line with
/// one `write(2)`, so lines from several threads never interleave.
struct JSONLogHandler: LogHandler {
    var logLevel: Logger.Level = .info
    var metadata: Logger.Metadata = [:]
    let label: String

    init(label: String) {
        self.label = label
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let (level, message, explicit, source) = (event.level, event.message, event.metadata, event.source)
        var line = "{\"time\":\"\(Self.timestamp())\",\"level\":\"\(level.rawValue)\",\"logger\":"
        Self.appendString(label, to: &line)
        line += ",\"message\":"
        Self.appendString(message.description, to: &line)
        line += ",\"source\":"
        Self.appendString(source, to: &line)
        let all = explicit.map { metadata.merging($0) { _, new in new } } ?? metadata
        for key in all.keys.sorted() where !Self.reserved.contains(key) {
            line += ","
            Self.appendString(key, to: &line)
            line += ":"
            Self.appendValue(all[key]!, to: &line)
        }
        line += "}\n"
        var bytes = Array(line.utf8)
        Self.lock.withLock {
            var offset = 0
            while offset < bytes.count {
                let written = bytes.withUnsafeMutableBytes { write(2, $0.baseAddress! + offset, $0.count - offset) }
                if written <= 0 { if errno == EINTR { continue } else { break } }
                offset += written
            }
        }
        bytes.removeAll()
    }

    private static let lock = NIOLock()
    private static let reserved: Set<String> = ["time", "level", "logger", "message", "source"]

    static func appendValue(_ value: Logger.Metadata.Value, to line: inout String) {
        switch value {
        case .string(let text): appendString(text, to: &line)
        case .stringConvertible(let convertible):
            // Counts given as numbers (bytes, durations) stay numbers, so collectors can sum them.
            if convertible is any BinaryInteger {
                line += convertible.description
            } else {
                appendString(convertible.description, to: &line)
            }
        case .array(let values):
            line += "["
            for (k, value) in values.enumerated() {
                if k > 0 { line += "," }
                appendValue(value, to: &line)
            }
            line += "]"
        case .dictionary(let values):
            line += "{"
            for (k, key) in values.keys.sorted().enumerated() {
                if k > 0 { line += "," }
                appendString(key, to: &line)
                line += ":"
                appendValue(values[key]!, to: &line)
            }
            line += "}"
        }
    }

    /// A JSON string literal (RFC 8259 §7): quotes, backslashes and control characters escaped.
    static func appendString(_ text: String, to line: inout String) {
        line += "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": line += "\\\""
            case "\\": line += "\\\\"
            case "\n": line += "\\n"
            case "\r": line += "\\r"
            case "\t": line += "\\t"
            case _ where scalar.value < 0x20 || scalar.value == 0x7F:
                let hex = String(scalar.value, radix: 16)
                line += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: line.unicodeScalars.append(scalar)
            }
        }
        line += "\""
    }

    /// 2026-11-28T07:40:55.123Z
    static func timestamp() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        var seconds = now.tv_sec
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func two(_ n: Int32) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let millis = Int(now.tv_nsec / 1_000_000)
        let ms = millis < 10 ? "00\(millis)" : millis < 100 ? "0\(millis)" : "\(millis)"
        return "\(parts.tm_year + 1900)-\(two(parts.tm_mon + 1))-\(two(parts.tm_mday))T\(two(parts.tm_hour)):\(two(parts.tm_min)):\(two(parts.tm_sec)).\(ms)Z"
    }
}
