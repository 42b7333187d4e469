#if canImport(Glibc)
import Glibc
#endif
import NIOConcurrencyHelpers
import NIOCore

/// Pushes `total` bytes of a known pattern into a connection to an echo, half-closes, and checks that exactly
/// the same bytes come back before the echo's end-of-file.
final class DemoLoadHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let pattern: ByteBuffer
    private let total: Int
    private let progress: NIOLockedValueBox<[Int]>
    private let slot: Int
    private let done: EventLoopPromise<Void>
    private var sent = 0
    private var received = 0
    private var reported = 0

    init(pattern: ByteBuffer, total: Int, progress: NIOLockedValueBox<[Int]>, slot: Int, done: EventLoopPromise<Void>) {
        self.pattern = pattern
        self.total = total
        self.progress = progress
        self.slot = slot
        self.done = done
    }

    func channelActive(context: ChannelHandlerContext) {
        pump(context: context)
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        pump(context: context)
    }

    private func pump(context: ChannelHandlerContext) {
        let chunk = 64 << 10
        while sent < total && context.channel.isWritable {
            let offset = sent % pattern.readableBytes
            let n = min(chunk, total - sent, pattern.readableBytes - offset)
            context.write(wrapOutboundOut(pattern.getSlice(at: pattern.readerIndex + offset, length: n)!), promise: nil)
            sent += n
        }
        context.flush()
        if sent == total {
            sent += 1  // only once
            context.close(mode: .output, promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let buffer = unwrapInboundIn(data)
        var checked = 0
        let count = buffer.readableBytes
        while checked < count {
            let offset = (received + checked) % pattern.readableBytes
            let n = min(count - checked, pattern.readableBytes - offset)
            let matches = buffer.withUnsafeReadableBytes { got in
                pattern.withUnsafeReadableBytes { want in
                    memcmp(got.baseAddress! + checked, want.baseAddress! + offset, n) == 0
                }
            }
            guard matches else {
                done.fail(DemoError.corrupted(at: received + checked))
                context.close(promise: nil)
                return
            }
            checked += n
        }
        received += count
        if received - reported >= 1 << 20 {
            let delta = received - reported
            reported = received
            progress.withLockedValue { $0[slot] += delta }
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case ChannelEvent.inputClosed = event { finish(context: context) }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish(context: context)
    }

    private func finish(context: ChannelHandlerContext) {
        let delta = received - reported
        reported = received
        progress.withLockedValue { $0[slot] += delta }
        if received == total {
            done.succeed(())
        } else {
            done.fail(DemoError.short(received: received, expected: total))
        }
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        done.fail(error)
        context.close(promise: nil)
    }
}

enum DemoError: Error, CustomStringConvertible {
    case corrupted(at: Int)
    case short(received: Int, expected: Int)

    var description: String {
        switch self {
        case .corrupted(let at): return "data came back different from what was sent, at byte \(at)"
        case .short(let r, let e): return "the echo ended after \(r) of \(e) bytes"
        }
    }
}
