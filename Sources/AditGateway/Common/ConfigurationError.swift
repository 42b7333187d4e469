/// Something the user wrote (a flag, a URL, a pattern) cannot be used; the message says what and how to fix it.
public struct ConfigurationError: Error, Sendable, CustomStringConvertible, Equatable {
    public var message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
