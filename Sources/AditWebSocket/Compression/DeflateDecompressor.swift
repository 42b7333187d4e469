import CAditZlib
import NIOCore

/// One zlib raw-inflate stream for RFC 7692 payloads, with a hard bound on what one message may inflate to: it
/// stops at the bound instead of allocating the rest, so a decompression bomb costs at most `limit` bytes.
public final class DeflateDecompressor {
    private let stream: UnsafeMutablePointer<z_stream>
    private static let tail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    public init(windowBits: Int) throws(PerMessageDeflateError) {
        precondition((8...15).contains(windowBits))
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let status = adit_inflate_init(stream, -Int32(windowBits))
        guard status == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            throw .zlib("inflateInit2", status)
        }
    }

    deinit {
        inflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Forgets the history (the peer does not take its context over).
    public func reset() {
        inflateReset(stream)
    }

    /// Inflates one frame's payload of a compressed message, appending to `output`, which may not grow past
    /// `limit` readable bytes.
    public func inflate(_ input: ByteBuffer, into output: inout ByteBuffer, limit: Int) throws(PerMessageDeflateError) {
        // The closure-taking APIs rethrow untyped errors; carry ours out as a value.
        let failure: PerMessageDeflateError? = input.withUnsafeReadableBytes { bytes in
            do throws(PerMessageDeflateError) { try run(bytes, into: &output, limit: limit) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    /// Ends a message: feeds the `00 00 ff ff` the sender cut off, so that the last block is complete.
    public func finishMessage(into output: inout ByteBuffer, limit: Int) throws(PerMessageDeflateError) {
        let failure: PerMessageDeflateError? = Self.tail.withUnsafeBytes { bytes in
            do throws(PerMessageDeflateError) { try run(bytes, into: &output, limit: limit) } catch { return error }
            return nil
        }
        if let failure { throw failure }
    }

    private func run(_ input: UnsafeRawBufferPointer, into output: inout ByteBuffer, limit: Int) throws(PerMessageDeflateError) {
        guard input.count > 0 else { return }
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress!.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = UInt32(input.count)
        defer { stream.pointee.next_in = nil }
        while stream.pointee.avail_in > 0 {
            // One byte past the bound is enough to know the message is too big.
            let (status, _) = try step(into: &output, chunk: max(input.count * 4, 16 << 10), limit: limit)
            switch status {
            case Z_OK:
                continue
            case Z_BUF_ERROR:
                // No progress: output space was the problem only if there was none left.
                if stream.pointee.avail_out == 0 { continue }
                return
            case Z_STREAM_END:
                // The peer ended the deflate stream (a block with BFINAL set, RFC 7692 §7.2.3.4): what follows
                // starts a new one.
                inflateReset(stream)
            default:
                throw .zlib("inflate", status)
            }
        }
        // All input taken; zlib may still hold output when the last chunk filled up.
        while true {
            let (_, produced) = try step(into: &output, chunk: 16 << 10, limit: limit)
            if produced == 0 || stream.pointee.avail_out > 0 { return }
        }
    }

    /// One call of `inflate` into at most `chunk` bytes of `output` (never past `limit` + 1).
    private func step(into output: inout ByteBuffer, chunk: Int, limit: Int) throws(PerMessageDeflateError) -> (Int32, Int) {
        let chunk = min(chunk, limit - output.readableBytes + 1)
        if output.writableBytes < chunk { output.reserveCapacity(minimumWritableBytes: chunk) }
        var status: Int32 = Z_OK
        let produced = output.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { buffer in
            let usable = min(buffer.count, chunk)
            stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = UInt32(usable)
            status = CAditZlib.inflate(stream, Z_SYNC_FLUSH)
            return usable - Int(stream.pointee.avail_out)
        }
        if output.readableBytes > limit { throw .tooLarge(limit) }
        if status == Z_DATA_ERROR {
            throw .corrupt(stream.pointee.msg.map { String(cString: $0) } ?? "invalid deflate data")
        }
        return (status, produced)
    }
}
