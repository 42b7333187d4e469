/// Decides, message by message, whether compressing is worth the CPU: a pure value, fed with what each
/// compression achieved.
///
/// Messages carry a key (the multiplexed stream that contributed most of their bytes). A key whose message did
/// not shrink by at least `minimumSaving` is skipped for a while, and the while doubles each time a probe fails
/// again (256 KiB up to 64 MiB), so an incompressible bulk stream costs one compressed message in many and a
/// stream that turns compressible is noticed within one probe. Keys live in a small direct-mapped table: memory
/// is fixed however many streams come and go, and a collision only forgets a verdict.
public struct CompressionAdvisor: Sendable {
    public enum Decision: Equatable, Sendable {
        case compress
        case skip
    }

    struct Slot {
        var key: UInt32 = .max
        var skipRemaining = 0
        var nextSkip = CompressionAdvisor.firstSkip
    }

    static let firstSkip = 256 << 10
    static let longestSkip = 64 << 20
    static let slotCount = 64

    private let mode: CompressionMode
    private let minimumSize: Int
    /// A message must lose at least this fraction of its size to count as compressible.
    private let minimumSaving = 0.05
    private var slots: [Slot]

    public init(mode: CompressionMode, minimumSize: Int) {
        self.mode = mode
        self.minimumSize = minimumSize
        self.slots = mode == .auto ? Array(repeating: Slot(), count: Self.slotCount) : []
    }

    public mutating func decide(key: UInt32, size: Int) -> Decision {
        switch mode {
        case .off: return .skip
        case .always: return .compress
        case .auto: break
        }
        guard size >= minimumSize else { return .skip }
        let index = Int(key % UInt32(Self.slotCount))
        if slots[index].key != key { slots[index] = Slot(key: key) }
        if slots[index].skipRemaining > 0 {
            slots[index].skipRemaining -= size
            return .skip
        }
        return .compress
    }

    public mutating func record(key: UInt32, before: Int, after: Int) {
        guard mode == .auto, before > 0 else { return }
        let index = Int(key % UInt32(Self.slotCount))
        guard slots[index].key == key else { return }
        if Double(after) > Double(before) * (1 - minimumSaving) {
            slots[index].skipRemaining = slots[index].nextSkip
            slots[index].nextSkip = min(slots[index].nextSkip * 2, Self.longestSkip)
        } else {
            slots[index].skipRemaining = 0
            slots[index].nextSkip = Self.firstSkip
        }
    }
}
