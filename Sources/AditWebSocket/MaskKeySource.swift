#if canImport(Glibc)
import Glibc
#endif

/// Unpredictable masking keys (RFC 6455 §5.3 requires a strong source of entropy) without a `getrandom`
/// system call per frame: the kernel's generator fills 512 keys at a time. Measured at ~1% of the client's
/// CPU before, as one system call per message.
struct MaskKeySource {
    private var pool = [UInt32](repeating: 0, count: 512)
    private var next = 512

    mutating func key() -> UInt32 {
        if next == pool.count { refill() }
        defer { next += 1 }
        return pool[next]
    }

    private mutating func refill() {
        let filled: Bool = pool.withUnsafeMutableBytes { raw in
            #if canImport(Glibc)
            var offset = 0
            while offset < raw.count {
                let n = systemGetrandom(raw.baseAddress! + offset, raw.count - offset, 0)
                if n <= 0 { return false }
                offset += n
            }
            return true
            #else
            return false
            #endif
        }
        if !filled {
            var rng = SystemRandomNumberGenerator()
            for i in pool.indices { pool[i] = rng.next() }
        }
        next = 0
    }
}

#if canImport(Glibc)
/// getrandom(2) from <sys/random.h>, which Swift's Glibc module does not import.
@_silgen_name("getrandom")
private func systemGetrandom(_ buffer: UnsafeMutableRawPointer, _ length: Int, _ flags: UInt32) -> Int
#endif
