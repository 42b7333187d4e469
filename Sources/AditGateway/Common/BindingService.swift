import ServiceLifecycle

/// A service with a listener of its own (metrics, admin) that binds it before the process reports itself
/// up: an address in use must stop the program at startup, not leave it running without the listener.
public protocol BindingService: Service {
    func bind() async throws
}
