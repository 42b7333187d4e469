import NIOCore

/// Round-robin order of the streams that have something to send. Each turn serves one stream for at most one
/// quantum and puts it at the back if it still has data, so a bulk stream cannot starve a small one.
public struct FairScheduler: Sendable {
    private var queue = CircularBuffer<StreamID>(initialCapacity: 16)
    private var queued = Set<StreamID>()

    public init() {}

    public var isEmpty: Bool { queue.isEmpty }
    public var count: Int { queue.count }

    /// Puts a stream at the back of the line unless it is already waiting.
    public mutating func markReady(_ id: StreamID) {
        if queued.insert(id).inserted { queue.append(id) }
    }

    /// The stream whose turn it is; it leaves the line until it is marked ready again.
    public mutating func next() -> StreamID? {
        guard let id = queue.popFirst() else { return nil }
        queued.remove(id)
        return id
    }

    public mutating func remove(_ id: StreamID) {
        guard queued.remove(id) != nil, let index = queue.firstIndex(of: id) else { return }
        queue.remove(at: index)
    }
}
