/// Something the user wrote (a flag, a URL, a pattern) cannot be used; the message says what and how to fix it.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// A failure the component already logged (with more context than the message): the process ends with exit
/// status 1 without saying it twice.
public struct ReportedFailure: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
