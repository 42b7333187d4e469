import CAditZlib
import NIOCore

/// One zlib raw-deflate stream that turns whole messages into RFC 7692 payloads: every message ends with a
/// sync flush whose `00 00 ff ff` tail is cut off (§7.2.1).
///
/// Written on zlib directly rather than through compress-nio: that library reports "output buffer full" by
/// throwing, takes one contiguous input, and cannot pick a strategy per stream; a message here arrives as
/// several buffers (frame headers and payload slices) and is compressed in one pass without joining them.
public final class DeflateCompressor {
    private let stream: UnsafeMutablePointer<z_stream>
    private let strategy: Int32
    /// The zlib level in use (`setLevel` changes it between messages).
    public private(set) var level: Int

    /// `windowBits` 9–15. A window of 8 cannot be used with zlib's raw deflate (deflateInit2 refuses it), so
    /// 8 compresses with Huffman coding only: no back-references at all, which any window honours.
    public init(windowBits: Int, level: Int, memoryLevel: Int = 8) throws(PerMessageDeflateError) {
        precondition((8...15).contains(windowBits) && (0...9).contains(level))
        stream = .allocate(capacity: 1)
        stream.initialize(to: z_stream())
        let huffmanOnly = windowBits < 9
        strategy = huffmanOnly ? Z_HUFFMAN_ONLY : Z_DEFAULT_STRATEGY
        self.level = level
        let status = adit_deflate_init(stream, Int32(level), -Int32(max(windowBits, 9)), Int32(memoryLevel), strategy)
        guard status == Z_OK else {
            stream.deinitialize(count: 1)
            stream.deallocate()
            throw .zlib("deflateInit2", status)
        }
    }

    deinit {
        deflateEnd(stream)
        stream.deinitialize(count: 1)
        stream.deallocate()
    }

    /// Forgets the history (no context takeover).
    public func reset() {
        deflateReset(stream)
    }

    /// Compresses from here on at `level` (1–9), keeping the history. Call it at the start of a message, with
    /// that message's output: between messages everything was flushed, so zlib has nothing of the old level
    /// left to emit, but should it emit anything (deflateParams may run deflate(Z_BLOCK)), those bytes belong to
    /// the stream and go into `output`, ahead of the message's own. Returns false (keeping the old level) if
    /// zlib refused.
    @discardableResult
    public func setLevel(_ level: Int, emittingInto output: inout ByteBuffer) -> Bool {
        precondition((1...9).contains(level))
        guard level != self.level else { return true }
        var status = Z_OK
        output.writeWithUnsafeMutableBytes(minimumWritableBytes: 64) { buffer in
            stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
            stream.pointee.avail_out = UInt32(buffer.count)
            status = deflateParams(stream, Int32(level), strategy)
            let written = buffer.count - Int(stream.pointee.avail_out)
            stream.pointee.next_out = nil
            stream.pointee.avail_out = 0
            return written
        }
        guard status == Z_OK else { return false }
        self.level = level
        return true
    }

    /// Appends the compressed form of the concatenation of `parts` to `output`.
    public func compress(_ parts: [ByteBuffer], into output: inout ByteBuffer) {
        let total = parts.reduce(0) { $0 + $1.readableBytes }
        guard total > 0 else {
            // An empty message is one empty stored block, which with the cut tail is the byte 00 (§7.2.3.6).
            // zlib would write nothing at all for a flush right after a flush.
            output.writeInteger(UInt8(0))
            return
        }
        // deflateBound covers a whole stream; the sync flush adds at most an empty stored block (5 bytes).
        output.reserveCapacity(minimumWritableBytes: Int(deflateBound(stream, UInt(total))) + 16)
        let last = parts.lastIndex { $0.readableBytes > 0 }!
        for index in parts.indices where parts[index].readableBytes > 0 {
            parts[index].withUnsafeReadableBytes { input in
                run(input: input, flush: index == last ? Z_SYNC_FLUSH : Z_NO_FLUSH, output: &output)
            }
        }
        // A sync flush always ends with the empty stored block 00 00 ff ff, which the receiver adds back.
        output.moveWriterIndex(to: output.writerIndex - 4)
    }

    private func run(input: UnsafeRawBufferPointer, flush: Int32, output: inout ByteBuffer) {
        stream.pointee.next_in = UnsafeMutablePointer(mutating: input.baseAddress?.assumingMemoryBound(to: Bytef.self))
        stream.pointee.avail_in = UInt32(input.count)
        while true {
            if output.writableBytes < 64 { output.reserveCapacity(minimumWritableBytes: max(4096, output.capacity / 2)) }
            let written = output.writeWithUnsafeMutableBytes(minimumWritableBytes: 0) { buffer in
                stream.pointee.next_out = buffer.baseAddress!.assumingMemoryBound(to: Bytef.self)
                stream.pointee.avail_out = UInt32(buffer.count)
                let status = deflate(stream, flush)
                // Z_BUF_ERROR only means "no progress possible", which the loop condition handles.
                precondition(status == Z_OK || status == Z_BUF_ERROR, "deflate failed: \(status)")
                return buffer.count - Int(stream.pointee.avail_out)
            }
            _ = written
            // Done when all input is taken and, for a flush, zlib had room to spare (nothing left inside).
            if stream.pointee.avail_in == 0 && (flush == Z_NO_FLUSH || stream.pointee.avail_out > 0) { break }
        }
        stream.pointee.next_in = nil
    }
}
