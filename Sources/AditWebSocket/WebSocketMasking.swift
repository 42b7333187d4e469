/// XOR masking of RFC 6455 §5.3, eight bytes per step. SwiftNIO's masking goes byte by byte (~0.46 GB/s,
/// see docs/architecture.md); this loop runs at memory speed, and copies while it masks so the caller never
/// needs a uniquely owned buffer.
public enum WebSocketMasking {
    /// Writes `source` XOR the repeating 4-byte `key` into `destination` (same length; may be the same memory).
    @inlinable
    public static func apply(key: UInt32, source: UnsafeRawBufferPointer, destination: UnsafeMutableRawBufferPointer) {
        precondition(source.count == destination.count)
        let count = source.count
        guard count > 0 else { return }
        // key is big-endian on the wire: first mask byte = highest byte.
        let k0 = UInt8(key >> 24), k1 = UInt8(key >> 16 & 0xFF), k2 = UInt8(key >> 8 & 0xFF), k3 = UInt8(key & 0xFF)
        var wide: UInt64 = 0
        withUnsafeMutableBytes(of: &wide) { w in
            w[0] = k0; w[1] = k1; w[2] = k2; w[3] = k3
            w[4] = k0; w[5] = k1; w[6] = k2; w[7] = k3
        }
        let src = source.baseAddress!
        let dst = destination.baseAddress!
        var i = 0
        let wideEnd = count & ~7
        while i < wideEnd {
            let v = src.loadUnaligned(fromByteOffset: i, as: UInt64.self) ^ wide
            dst.storeBytes(of: v, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        let keys = (k0, k1, k2, k3)
        while i < count {
            let k: UInt8
            switch i & 3 {
            case 0: k = keys.0
            case 1: k = keys.1
            case 2: k = keys.2
            default: k = keys.3
            }
            dst.storeBytes(of: src.load(fromByteOffset: i, as: UInt8.self) ^ k, toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }

    /// The key to use for bytes that start `offset` bytes into a masked payload.
    @inlinable
    public static func rotate(_ key: UInt32, by offset: Int) -> UInt32 {
        let phase = UInt32(offset & 3)
        return phase == 0 ? key : (key << (8 * phase)) | (key >> (32 - 8 * phase))
    }
}
