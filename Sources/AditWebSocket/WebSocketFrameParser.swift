import NIOCore

/// Cuts a byte stream into frames (RFC 6455 §5.2). Pure value: bytes in, frames out; the handler does the I/O.
/// Unmasked payloads (server to client) are slices of the input, never copies; masked ones are unmasked while
/// being copied into a fresh buffer in one pass.
public struct WebSocketFrameParser: Sendable {
    public enum Role: Sendable { case client, server }

    public let role: Role
    public let maxFramePayload: Int
    private var pending: ByteBuffer?

    public init(role: Role, maxFramePayload: Int) {
        self.role = role
        self.maxFramePayload = maxFramePayload
    }

    /// Bytes held back because they do not form a whole frame yet.
    public var bufferedBytes: Int { pending?.readableBytes ?? 0 }

    public mutating func append(_ bytes: ByteBuffer) {
        if pending == nil || pending!.readableBytes == 0 {
            pending = bytes
        } else {
            var bytes = bytes
            pending!.writeBuffer(&bytes)
        }
    }

    /// The next whole frame, or nil when more bytes are needed.
    public mutating func next(allocator: ByteBufferAllocator) throws(WebSocketProtocolError) -> WebSocketFrame? {
        guard var buffer = pending, buffer.readableBytes >= 2 else { return nil }
        let start = buffer.readerIndex
        let first = buffer.getInteger(at: start, as: UInt8.self)!
        let second = buffer.getInteger(at: start + 1, as: UInt8.self)!
        let masked = second & 0x80 != 0
        var length = Int(second & 0x7F)
        var headerSize = 2
        if length == 126 {
            guard let l = buffer.getInteger(at: start + 2, as: UInt16.self) else { return nil }
            length = Int(l)
            headerSize = 4
            if length < 126 { throw .init(.protocolError, "16-bit length \(length) should have used the short form") }
        } else if length == 127 {
            guard let l = buffer.getInteger(at: start + 2, as: UInt64.self) else { return nil }
            guard l < 1 << 62 else { throw .init(.messageTooBig, "frame announces \(l) bytes") }
            length = Int(l)
            headerSize = 10
        }
        guard let opcode = WebSocketOpcode(rawValue: first & 0x0F) else {
            throw .init(.protocolError, "unknown opcode \(first & 0x0F)")
        }
        let fin = first & 0x80 != 0
        if opcode.isControl {
            guard fin else { throw .init(.protocolError, "fragmented control frame") }
            guard length <= 125 else { throw .init(.protocolError, "control frame of \(length) bytes (limit 125)") }
        }
        guard length <= maxFramePayload else {
            throw .init(.messageTooBig, "frame of \(length) bytes exceeds the limit of \(maxFramePayload)")
        }
        switch (role, masked) {
        case (.server, false): throw .init(.protocolError, "client frame is not masked")
        case (.client, true): throw .init(.protocolError, "server frame is masked")
        default: break
        }
        var maskKey: UInt32 = 0
        if masked {
            guard let k = buffer.getInteger(at: start + headerSize, as: UInt32.self) else { return nil }
            maskKey = k
            headerSize += 4
        }
        guard buffer.readableBytes >= headerSize + length else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        var payload = buffer.readSlice(length: length)!
        if masked && length > 0 {
            var clear = allocator.buffer(capacity: length)
            clear.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { dst in
                payload.withUnsafeReadableBytes { src in
                    WebSocketMasking.apply(key: maskKey, source: src,
                                           destination: UnsafeMutableRawBufferPointer(rebasing: dst[0..<length]))
                }
                return length
            }
            payload = clear
        }
        pending = buffer.readableBytes == 0 ? nil : buffer
        if pending != nil, pending!.readerIndex > 1 << 20 { pending!.discardReadBytes() }
        return WebSocketFrame(fin: fin, rsv: first & 0x70, opcode: opcode, payload: payload)
    }
}
