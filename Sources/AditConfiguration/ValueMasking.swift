import Foundation

/// What `check-config` prints in place of secrets: a password in a URL, the value of a credential header.
package enum ValueMasking {
    package static let credentialHeaders: Set<String> = ["authorization", "proxy-authorization", "cookie", "x-api-key"]

    package static func masked(_ value: String, key: String) -> String {
        switch key {
        case "header", "proxy-header":
            guard let colon = value.firstIndex(of: ":") else { return value }
            let name = value[..<colon].trimmingCharacters(in: .whitespaces).lowercased()
            let sensitive = credentialHeaders.contains(name) || name.contains("token") || name.contains("secret")
            return sensitive ? "\(value[..<colon]): ****" : value
        default:
            return maskedURLPassword(value)
        }
    }

    /// `http://alice:s3cret@proxy:3128` → `http://alice:****@proxy:3128`; anything else unchanged.
    package static func maskedURLPassword(_ value: String) -> String {
        guard let scheme = value.range(of: "://") else { return value }
        let rest = value[scheme.upperBound...]
        let authorityEnd = rest.firstIndex(where: { $0 == "/" || $0 == "?" || $0 == "#" }) ?? rest.endIndex
        let authority = rest[..<authorityEnd]
        guard let at = authority.lastIndex(of: "@"), let colon = authority[..<at].firstIndex(of: ":") else { return value }
        return String(value[..<rest.startIndex]) + authority[...colon] + "****" + value[at...]
    }
}
