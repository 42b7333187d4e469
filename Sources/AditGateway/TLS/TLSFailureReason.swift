import NIOSSL

/// BoringSSL reports a failed handshake as a string like
/// `error:1000007d:SSL routines:OPENSSL_internal:CERTIFICATE_VERIFY_FAILED at /build/path/handshake.cc:393`.
/// Users get a sentence instead: the reason code is what we match, and the build path never reaches a log.
enum TLSFailureReason {
    /// The BoringSSL reason code (`CERTIFICATE_VERIFY_FAILED`), or nil for errors that carry none.
    static func code(of error: any Error) -> String? {
        let text = "\(error)"
        guard let marker = text.range(of: "OPENSSL_internal:") else { return nil }
        let code = text[marker.upperBound...].prefix { $0.isUppercase || $0.isNumber || $0 == "_" }
        return code.isEmpty ? nil : String(code)
    }

    /// Why a client's handshake with this server failed, as the end of a sentence ("…: it sent no client
    /// certificate"); nil when the client simply went away.
    static func serverSide(_ error: any Error) -> String? {
        let text = "\(error)"
        if text.contains("EOF during handshake") { return nil }
        if case .uncleanShutdown = error as? NIOSSLError { return nil }
        guard let code = code(of: error) else {
            return "the TLS handshake failed (\(text.prefix(120)))"
        }
        switch code {
        case "HTTP_REQUEST", "WRONG_VERSION_NUMBER", "HTTPS_PROXY_REQUEST":
            return "it does not speak TLS (a ws:// client on this wss:// port?)"
        case "CERTIFICATE_REQUIRED", "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return "it sent no client certificate, and --tls-ca requires one"
        case "CERTIFICATE_VERIFY_FAILED":
            return "its client certificate is not issued by the --tls-ca authority, or has expired"
        case "TLSV1_ALERT_UNKNOWN_CA", "SSLV3_ALERT_BAD_CERTIFICATE", "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
             "TLSV1_ALERT_ACCESS_DENIED", "SSLV3_ALERT_CERTIFICATE_EXPIRED":
            return "the client does not trust this server's certificate (\(code)): give clients its CA (--ca-file) or its key pin (--pin)"
        case "NO_SHARED_CIPHER", "UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION", "NO_SHARED_GROUP",
             "NO_COMMON_SIGNATURE_ALGORITHMS":
            return "it offers no TLS version or cipher this server accepts (TLS 1.2 or later) (\(code))"
        default:
            return "the TLS handshake failed (\(code))"
        }
    }
}
