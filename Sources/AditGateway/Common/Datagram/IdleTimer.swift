import NIOCore

/// Fires once nothing happened for `timeout`: UDP has no end, so a flow ends when it goes quiet. Activity only
/// stamps a time; the timer re-arms itself when it wakes early, so busy flows cost no timer churn.
final class IdleTimer {
    private let eventLoop: any EventLoop
    private let timeout: TimeAmount
    private var lastActivity: NIODeadline
    private var task: Scheduled<Void>?
    private let onIdle: () -> Void

    init(eventLoop: any EventLoop, timeout: TimeAmount, onIdle: @escaping () -> Void) {
        self.eventLoop = eventLoop
        self.timeout = timeout
        self.lastActivity = .now()
        self.onIdle = onIdle
        arm(in: timeout)
    }

    func touch() { lastActivity = .now() }

    func cancel() {
        task?.cancel()
        task = nil
    }

    private func arm(in delay: TimeAmount) {
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        task = eventLoop.scheduleTask(in: delay) { bound.value.wake() }
    }

    private func wake() {
        guard task != nil else { return }
        let quiet = NIODeadline.now() - lastActivity
        if quiet >= timeout {
            task = nil
            onIdle()
        } else {
            arm(in: timeout - quiet)
        }
    }
}
