import NIOCore

/// Cuts a byte stream into frames (RFC 6455 §5.2). Pure value: bytes in, frames out; the handler does the I/O.
///
/// Copies are kept to the minimum: an unmasked frame (server to client) that lies within one read is a slice of
/// the read buffer; a masked frame (client to server) is unmasked while it is copied, once, into its own buffer;
/// only an unmasked frame that spans reads is copied, once, as its pieces arrive. Input is never accumulated
/// wholesale.
public struct WebSocketFrameParser: Sendable {
    public enum Role: Sendable { case client, server }

    struct Header {
        var fin: Bool
        var rsv: UInt8
        var opcode: WebSocketOpcode
        var length: Int
        var maskKey: UInt32?
    }

    /// A frame whose header we have and whose payload is still arriving.
    struct Partial {
        var header: Header
        var payload: ByteBuffer
        var remaining: Int
    }

    public let role: Role
    public let maxFramePayload: Int
    private var input: ByteBuffer?
    private var partial: Partial?

    public init(role: Role, maxFramePayload: Int) {
        self.role = role
        self.maxFramePayload = maxFramePayload
    }

    /// Bytes received that are not yet part of a returned frame.
    public var bufferedBytes: Int {
        (input?.readableBytes ?? 0) + (partial.map { $0.payload.readableBytes } ?? 0)
    }

    public mutating func append(_ bytes: ByteBuffer) {
        guard var leftover = input, leftover.readableBytes > 0 else {
            input = bytes
            return
        }
        // Only a piece of a header (under 14 bytes) is ever left over: join it with the new bytes.
        var bytes = bytes
        input = nil
        leftover.writeBuffer(&bytes)
        input = leftover
    }

    /// The next whole frame, or nil when more bytes are needed.
    public mutating func next(allocator: ByteBufferAllocator) throws(WebSocketProtocolError) -> WebSocketFrame? {
        if partial != nil { return continuePartial() }
        guard var buffer = input, buffer.readableBytes >= 2 else { return nil }
        input = nil
        defer { input = buffer.readableBytes > 0 ? buffer : nil }
        guard let (header, headerSize) = try parseHeader(buffer) else { return nil }
        buffer.moveReaderIndex(forwardBy: headerSize)
        let available = min(buffer.readableBytes, header.length)
        if available == header.length, header.maskKey == nil {
            return WebSocketFrame(fin: header.fin, rsv: header.rsv, opcode: header.opcode,
                                  payload: buffer.readSlice(length: header.length)!)
        }
        var payload = allocator.buffer(capacity: header.length)
        var piece = buffer.readSlice(length: available)!
        Self.copy(&piece, into: &payload, maskKey: header.maskKey)
        if available == header.length {
            return WebSocketFrame(fin: header.fin, rsv: header.rsv, opcode: header.opcode, payload: payload)
        }
        partial = Partial(header: header, payload: payload, remaining: header.length - available)
        return nil
    }

    private mutating func continuePartial() -> WebSocketFrame? {
        guard var buffer = input, buffer.readableBytes > 0, var p = partial else { return nil }
        input = nil
        partial = nil
        let take = min(buffer.readableBytes, p.remaining)
        var piece = buffer.readSlice(length: take)!
        Self.copy(&piece, into: &p.payload, maskKey: p.header.maskKey)
        p.remaining -= take
        input = buffer.readableBytes > 0 ? buffer : nil
        if p.remaining > 0 {
            partial = p
            return nil
        }
        return WebSocketFrame(fin: p.header.fin, rsv: p.header.rsv, opcode: p.header.opcode, payload: p.payload)
    }

    /// Appends `piece` to `payload`, unmasking it when `maskKey` is set. The mask phase follows from how many
    /// payload bytes came before.
    private static func copy(_ piece: inout ByteBuffer, into payload: inout ByteBuffer, maskKey: UInt32?) {
        guard let key = maskKey else {
            payload.writeBuffer(&piece)
            return
        }
        let count = piece.readableBytes
        guard count > 0 else { return }
        let rotated = WebSocketMasking.rotate(key, by: payload.writerIndex)
        payload.writeWithUnsafeMutableBytes(minimumWritableBytes: count) { dst in
            piece.withUnsafeReadableBytes { src in
                WebSocketMasking.apply(key: rotated, source: src,
                                       destination: UnsafeMutableRawBufferPointer(rebasing: dst[0..<count]))
            }
            return count
        }
        piece.moveReaderIndex(forwardBy: count)
    }

    private func parseHeader(_ buffer: ByteBuffer) throws(WebSocketProtocolError) -> (Header, Int)? {
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
        var maskKey: UInt32? = nil
        if masked {
            guard let k = buffer.getInteger(at: start + headerSize, as: UInt32.self) else { return nil }
            maskKey = k
            headerSize += 4
        }
        return (Header(fin: fin, rsv: first & 0x70, opcode: opcode, length: length, maskKey: maskKey), headerSize)
    }
}
