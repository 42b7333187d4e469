/// A permessage-deflate failure on one connection.
public enum PerMessageDeflateError: Error, Sendable, Equatable, CustomStringConvertible {
    /// A message would inflate past the configured bound (close code 1009).
    case tooLarge(Int)
    /// The compressed payload is not valid deflate data (close code 1007).
    case corrupt(String)
    /// zlib refused an operation (out of memory, bad parameters).
    case zlib(String, Int32)

    public var description: String {
        switch self {
        case .tooLarge(let limit): return "a compressed message inflates to more than \(limit) bytes"
        case .corrupt(let why): return "a compressed message is not valid deflate data (\(why))"
        case .zlib(let call, let status): return "zlib \(call) failed with status \(status)"
        }
    }
}
