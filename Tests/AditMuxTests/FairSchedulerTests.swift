import AditMux
import Testing

@Suite struct FairSchedulerTests {
    @Test func roundRobinWithoutDuplicates() {
        var s = FairScheduler()
        s.markReady(StreamID(1))
        s.markReady(StreamID(3))
        s.markReady(StreamID(1))  // already waiting: no second turn
        s.markReady(StreamID(5))
        #expect(s.count == 3)
        #expect(s.next() == StreamID(1))
        s.markReady(StreamID(1))  // back of the line
        #expect(s.next() == StreamID(3))
        #expect(s.next() == StreamID(5))
        #expect(s.next() == StreamID(1))
        #expect(s.next() == nil)
    }

    @Test func removeTakesAStreamOutOfLine() {
        var s = FairScheduler()
        for id in [1, 3, 5] { s.markReady(StreamID(UInt32(id))) }
        s.remove(StreamID(3))
        #expect(s.next() == StreamID(1))
        #expect(s.next() == StreamID(5))
        #expect(s.isEmpty)
    }

    /// A bulk stream with 100 quanta queued and a small stream that becomes ready later: the small one is
    /// served within one turn of the bulk one, not after it drains.
    @Test func aSmallStreamWaitsAtMostOneQuantumBehindABulkOne() {
        var s = FairScheduler()
        var bulkLeft = 100
        var served: [StreamID] = []
        s.markReady(StreamID(1))
        var smallArrived = false
        while let id = s.next() {
            served.append(id)
            if id == StreamID(1) {
                bulkLeft -= 1
                if bulkLeft > 0 { s.markReady(id) }
            }
            if served.count == 10 && !smallArrived {
                smallArrived = true
                s.markReady(StreamID(3))
            }
        }
        let smallTurn = served.firstIndex(of: StreamID(3))!
        #expect(smallTurn <= 11)
        #expect(served.count == 101)
    }
}
