import NIOCore

/// One message handed from the multiplexer to the transport below it (a WebSocket binary message). Its bytes are
/// the concatenation of `parts`, kept apart so that neither layer copies payload to build it: frame headers and
/// slices of what was read from the local sockets go down as they are, and the WebSocket layer either writes
/// them with one `writev` (server) or masks them in one pass into the frame (client).
public struct TunnelMessage: Sendable {
    public private(set) var parts: [ByteBuffer]
    public private(set) var byteCount: Int
    /// The flow most of these bytes belong to (a stream ID; 0 for control), so that the transport can learn
    /// per flow whether compressing is worth it.
    public var compressionKey: UInt32 = 0

    public init() {
        self.parts = []
        self.byteCount = 0
    }

    public init(_ buffer: ByteBuffer) {
        self.parts = [buffer]
        self.byteCount = buffer.readableBytes
    }

    public mutating func append(_ buffer: ByteBuffer) {
        guard buffer.readableBytes > 0 else { return }
        parts.append(buffer)
        byteCount += buffer.readableBytes
    }

    /// The bytes as one buffer (tests and diagnostics; the data path never calls this).
    public func joined(allocator: ByteBufferAllocator = ByteBufferAllocator()) -> ByteBuffer {
        if parts.count == 1 { return parts[0] }
        var out = allocator.buffer(capacity: byteCount)
        for var part in parts { out.writeBuffer(&part) }
        return out
    }
}
