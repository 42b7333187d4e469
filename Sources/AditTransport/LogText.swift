/// Text a peer controls (a User-Agent, a URL, a RESET or GOAWAY reason), made safe for a log line: control
/// characters and line feeds are escaped (`\n`, `\x1b`), so a peer cannot forge log lines, and long text is cut
/// with the number of bytes left out, so it cannot flood the log either.
public enum LogText {
    public static func bounded(_ text: String, limit: Int = 200) -> String {
        var out = ""
        var count = 0
        for scalar in text.unicodeScalars {
            if count >= limit {
                let left = text.utf8.count - out.utf8.count
                return out + "…(+\(max(left, 1)) bytes)"
            }
            switch scalar {
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\\": out += "\\\\"
            default:
                if scalar.value < 0x20 || scalar.value == 0x7F || (0x80...0x9F).contains(scalar.value)
                    || scalar.value == 0x2028 || scalar.value == 0x2029 {
                    out += "\\u{\(String(scalar.value, radix: 16))}"
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
            count += 1
        }
        return out
    }
}
