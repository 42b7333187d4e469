import NIOCore

/// Book-keeping of one stream inside `MuxHandler`: its state machine, the endpoint it is bound to, and the bytes
/// in flight each way. Lives and dies on the tunnel's event loop.
final class MuxStream {
    let id: StreamID
    var state: StreamStateMachine
    let request: MuxOpenRequest
    /// The local connection (client side) or target connection (server side); nil while the server connects.
    var endpoint: (any MuxStreamEndpoint)?
    /// Completed by OPEN_OK, failed by RESET or the session's end, for streams we open.
    var openPromise: EventLoopPromise<Void>?
    /// When we sent OPEN (streams we open), for the open timeout.
    var openedAt: NIODeadline = .now()

    /// OPEN_OK was sent or received: the stream carried (or could carry) data, and gets a `MuxStreamRecord`.
    var established = false
    /// Payload bytes received from the peer and sent to it, for the stream's record.
    var bytesFromPeer = 0
    var bytesToPeer = 0

    /// Bytes read from the endpoint, not yet framed (datagram streams: one datagram per element).
    var outbound = CircularBuffer<ByteBuffer>(initialCapacity: 2)
    var outboundBytes = 0
    /// Something was read from the endpoint: an open that fails can no longer be retried elsewhere unnoticed.
    var readAnything = false
    /// A read() was requested from the endpoint and its read-complete has not come yet.
    var readInFlight = false
    /// Waiting in `MuxHandler`'s queue for the session's read-ahead to drop below its high-water mark.
    var waitingForSessionReadBudget = false

    /// Data from the peer that arrived before the endpoint existed (server side, while connecting).
    var backlog: [ByteBuffer] = []
    /// Bytes written to the endpoint whose write has not completed: not yet consumed, no credit returned.
    var writesInFlight = 0
    /// Endpoint has queued writes that still need a flush.
    var needsFlush = false

    init(id: StreamID, state: StreamStateMachine, request: MuxOpenRequest, endpoint: (any MuxStreamEndpoint)?) {
        self.id = id
        self.state = state
        self.request = request
        self.endpoint = endpoint
    }

    var target: MuxTarget { request.target }

    /// Whether the scheduler has something to do for this stream right now.
    var hasSendableWork: Bool {
        guard state.canSend else { return false }
        if state.kind == .datagram {
            // A datagram goes whole or waits for credit (an empty datagram is a datagram too).
            guard let front = outbound.first else { return false }
            return state.sendWindow.available >= front.readableBytes
        }
        if outboundBytes > 0 { return state.sendWindow.available > 0 }
        return state.finQueued
    }

    /// Takes `count` bytes off the front of the outbound queue as slices (no copy) and appends them to `parts`.
    func takeOutbound(_ count: Int, into parts: inout [ByteBuffer]) {
        var remaining = count
        while remaining > 0 {
            let front = outbound[outbound.startIndex].readableBytes
            if remaining >= front {
                parts.append(outbound.removeFirst())
                remaining -= front
            } else {
                outbound.withMutableFront { parts.append($0.readSlice(length: remaining)!) }
                remaining = 0
            }
        }
        outboundBytes -= count
    }
}

extension CircularBuffer {
    fileprivate mutating func withMutableFront(_ body: (inout Element) -> Void) {
        body(&self[self.startIndex])
    }
}

extension MuxStream {
    func record(_ end: MuxStreamRecord.End) -> MuxStreamRecord {
        MuxStreamRecord(id: id, request: request, bytesFromPeer: bytesFromPeer, bytesToPeer: bytesToPeer,
                        duration: .now() - openedAt, end: end)
    }
}
