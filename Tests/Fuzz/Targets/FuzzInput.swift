/// The fuzzer's bytes read as a sequence of choices: chunk sizes first, then the bytes, so that one input
/// explores both what a peer sends and how the network splits it.
struct FuzzInput {
    private let bytes: [UInt8]
    private var position = 0

    init(_ bytes: [UInt8]) { self.bytes = bytes }

    var isEmpty: Bool { position >= bytes.count }
    var remaining: [UInt8] { Array(bytes[min(position, bytes.count)...]) }

    mutating func byte() -> UInt8 {
        guard position < bytes.count else { return 0 }
        defer { position += 1 }
        return bytes[position]
    }

    mutating func take(_ count: Int) -> [UInt8] {
        let end = min(bytes.count, position + max(0, count))
        defer { position = end }
        return Array(bytes[min(position, end)..<end])
    }

    /// The rest of the input cut into chunks whose sizes come from the input itself (1...64 bytes, or the rest
    /// when the size byte is 0).
    static func chunks(_ bytes: [UInt8]) -> [[UInt8]] {
        guard let first = bytes.first else { return [] }
        let data = Array(bytes.dropFirst())
        var out: [[UInt8]] = []
        var index = 0
        var size = Int(first & 0x3F) + 1
        while index < data.count {
            let end = first == 0 ? data.count : min(data.count, index + size)
            out.append(Array(data[index..<end]))
            index = end
            size = Int(data[index - 1] & 0x3F) + 1
        }
        return out
    }
}
