import ServiceLifecycle

/// A service with a listener of its own (metrics, admin) that binds it before the process reports itself
/// up: an address in use must stop the program at startup, not leave it running without the listener.
public protocol BindingService: Service {
    func bind() async throws
    /// Returns once the listener accepts connections, or once it has stopped trying. The program announces
    /// itself ("listening on …") only after this, so whoever waits for that line can use every listener.
    func serving() async
}

extension BindingService {
    public func serving() async {}
}
