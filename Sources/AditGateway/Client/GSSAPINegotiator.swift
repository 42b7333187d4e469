import AditProxy
import CAditGSSAPI
import Foundation
import NIOConcurrencyHelpers

/// Negotiate (SPNEGO/Kerberos) tokens from the system GSSAPI, with the user's ticket cache (`kinit`;
/// `KRB5CCNAME` and `KRB5_CONFIG` are honoured). The service is `HTTP@<proxy host>`, spelled as in `--proxy`:
/// the KDC must know that name (use the proxy's name, not its address).
final class GSSAPINegotiator: NegotiateTokenSource, @unchecked Sendable {
    private let service: String
    // One exchange per proxy connection attempt, on one event loop; the lock only guards against misuse.
    private let lock = NIOLock()
    private var context: UnsafeMutableRawPointer?

    init(proxyHost: String) {
        self.service = "HTTP@\(proxyHost)"
    }

    deinit {
        adit_gss_delete(&context)
    }

    func nextToken(serverToken: Data) throws -> Data {
        try lock.withLock {
            if serverToken.isEmpty { adit_gss_delete(&context) }  // a fresh exchange
            var output: UnsafeMutableRawPointer?
            var outputLength = 0
            var error = [CChar](repeating: 0, count: 512)
            let status = serverToken.withUnsafeBytes { input in
                adit_gss_step(&context, service, input.baseAddress, input.count, &output, &outputLength, &error, error.count)
            }
            defer { adit_gss_free(output) }
            guard status >= 0 else {
                let text = String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
                throw NegotiateUnavailable(service: service, detail: text)
            }
            guard let output, outputLength > 0 else { return Data() }
            return Data(bytes: output, count: outputLength)
        }
    }
}

/// No Kerberos ticket could be used for the proxy.
struct NegotiateUnavailable: Error, CustomStringConvertible {
    var service: String
    var detail: String
    var description: String { "Negotiate for \(service) failed: \(detail)" }
}
