import NIOCore

/// One RFC 6455 frame with its payload already unmasked.
public struct WebSocketFrame: Sendable, Equatable {
    public var fin: Bool
    /// RSV1–RSV3 as the top three bits of the first byte (0x40, 0x20, 0x10).
    public var rsv: UInt8
    public var opcode: WebSocketOpcode
    public var payload: ByteBuffer

    public init(fin: Bool = true, rsv: UInt8 = 0, opcode: WebSocketOpcode, payload: ByteBuffer) {
        self.fin = fin
        self.rsv = rsv
        self.opcode = opcode
        self.payload = payload
    }

    /// Largest header: 2 bytes + 8 bytes of length + 4 bytes of mask key.
    public static let maxHeaderSize = 14

    /// Writes the header for a payload of `length` bytes.
    @inlinable
    public static func writeHeader(fin: Bool, rsv: UInt8, opcode: WebSocketOpcode, length: Int, maskKey: UInt32?,
                                   into buffer: inout ByteBuffer) {
        let first = (fin ? 0x80 : 0) | rsv | opcode.rawValue
        let maskBit: UInt8 = maskKey == nil ? 0 : 0x80
        if length < 126 {
            buffer.writeMultipleIntegers(first, maskBit | UInt8(length))
        } else if length <= 0xFFFF {
            buffer.writeMultipleIntegers(first, maskBit | 126, UInt16(length))
        } else {
            buffer.writeMultipleIntegers(first, maskBit | 127, UInt64(length))
        }
        if let maskKey { buffer.writeInteger(maskKey) }
    }

    /// Serialises a whole frame, masking it with `maskKey` when given (client to server).
    public static func encode(fin: Bool = true, rsv: UInt8 = 0, opcode: WebSocketOpcode, payload: ByteBuffer,
                              maskKey: UInt32?, allocator: ByteBufferAllocator) -> ByteBuffer {
        let length = payload.readableBytes
        var out = allocator.buffer(capacity: maxHeaderSize + length)
        writeHeader(fin: fin, rsv: rsv, opcode: opcode, length: length, maskKey: maskKey, into: &out)
        if let maskKey {
            out.writeWithUnsafeMutableBytes(minimumWritableBytes: length) { dst in
                payload.withUnsafeReadableBytes { src in
                    WebSocketMasking.apply(key: maskKey, source: src, destination: UnsafeMutableRawBufferPointer(rebasing: dst[0..<length]))
                }
                return length
            }
        } else {
            var payload = payload
            out.writeBuffer(&payload)
        }
        return out
    }
}
