import NIOCore

/// Book-keeping of one stream inside `MuxHandler`: its state machine, the local connection it is bound to, and
/// the bytes in flight each way. Lives and dies on the tunnel's event loop.
final class MuxStream {
    let id: StreamID
    var state: StreamStateMachine
    let target: MuxTarget
    /// The local connection (client side) or target connection (server side); nil while the server connects.
    var endpoint: (any Channel)?

    /// Bytes read from the endpoint, not yet framed.
    var outbound = CircularBuffer<ByteBuffer>(initialCapacity: 2)
    var outboundBytes = 0
    /// The endpoint reached end-of-file; FIN goes out after the last outbound byte.
    var outboundFinPending = false
    /// A read() was requested from the endpoint and its channelReadComplete has not come yet.
    var readInFlight = false

    /// Data from the peer that arrived before the endpoint existed (server side, while connecting).
    var backlog: [ByteBuffer] = []
    var backlogFin = false
    /// Bytes written to the endpoint whose write has not completed: not yet consumed, no credit returned.
    var writesInFlight = 0
    /// The peer's FIN, to pass on once `writesInFlight` reaches zero.
    var inboundFinPending = false
    var inboundFinDelivered = false
    /// Endpoint has queued writes that still need a flush.
    var needsFlush = false

    init(id: StreamID, state: StreamStateMachine, target: MuxTarget, endpoint: (any Channel)?) {
        self.id = id
        self.state = state
        self.target = target
        self.endpoint = endpoint
    }

    /// Whether the scheduler has something to do for this stream right now.
    var hasSendableWork: Bool {
        guard state.canSend else { return false }
        if outboundBytes > 0 { return state.sendWindow.available > 0 }
        return outboundFinPending
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
