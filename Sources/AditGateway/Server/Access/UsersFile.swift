import AditMux
import Foundation
import Yams

/// The users file (`--users FILE`, YAML): who may use the server and what each may reach. Parsed with Yams's
/// node tree so that every error names its line; unknown keys are errors too (a misspelt `alow:` must not
/// silently leave a user with the server's defaults).
///
/// ```yaml
/// users:
///   - name: alice
///     token: sha256:…              # or tokens: [ … ]; `adit token alice` prints one
///     password: scrypt:…           # for Basic on the upgrade; `adit token --password` prints one
///     certificate: CN=alice        # or certificates: [ … ]: client-certificate identities (--tls-ca)
///     allow: [db.internal:5432]    # default: the server's --allow
///     allow-reverse: ["127.0.0.1:8000-8999"]
///     limits: { sessions: 4, streams: 1000 }
/// ```
public enum UsersFile {
    public struct LoadError: Error, Sendable, CustomStringConvertible {
        public var path: String
        public var line: Int?
        public var detail: String

        public var description: String {
            "\(path)\(line.map { ":\($0)" } ?? ""): \(detail)"
        }
    }

    public static func load(path: String) throws(LoadError) -> [UserRecord] {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw LoadError(path: path, line: nil, detail: "cannot be read (\(error.localizedDescription))")
        }
        return try parse(text, path: path)
    }

    public static func parse(_ text: String, path: String) throws(LoadError) -> [UserRecord] {
        func fail(_ node: Node?, _ detail: String) -> LoadError {
            LoadError(path: path, line: node?.mark?.line, detail: detail)
        }
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch let error as YamlError {
            throw LoadError(path: path, line: error.line, detail: "is not valid YAML: \(error.problem)")
        } catch {
            throw LoadError(path: path, line: nil, detail: "is not valid YAML: \(error)")
        }
        guard let root, let top = root.mapping else {
            throw fail(root, "must be a mapping with a `users:` list")
        }
        for key in top.keys where key.string != "users" {
            throw fail(key, "unknown key `\(key.string ?? "?")` (the file has one key, `users`)")
        }
        guard let list = top["users"] else { throw fail(root, "has no `users:` list") }
        if case .scalar(let scalar) = list, scalar.string.isEmpty || scalar.string == "null" { return [] }
        guard let entries = list.sequence else { throw fail(list, "`users` must be a list of users") }

        var users: [UserRecord] = []
        var names: [String: Int] = [:]
        var tokens: [TokenDigest: String] = [:]
        var certificates: [String: String] = [:]
        for entry in entries {
            guard let fields = entry.mapping else { throw fail(entry, "each user must be a mapping (name, token, allow, …)") }
            guard let name = fields["name"]?.string, !name.isEmpty else { throw fail(entry, "a user without a `name`") }
            guard name.count <= 64, name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || "._@-".unicodeScalars.contains($0) }) else {
                throw fail(fields["name"], "user name `\(name)` may have letters, digits and . _ @ - only (at most 64)")
            }
            if let earlier = names[name] { throw fail(entry, "user `\(name)` is listed twice (first on line \(earlier))") }
            names[name] = entry.mark?.line ?? 0
            var user = UserRecord(name: name)
            for (keyNode, value) in fields {
                let key = keyNode.string ?? ""
                switch key {
                case "name":
                    break
                case "token", "tokens":
                    for item in try strings(value, key: key, fail: fail) {
                        guard let digest = TokenDigest.parse(item.text) else {
                            throw fail(item.node, "`\(key)` must be sha256:<64 hex digits> (the SHA-256 of the token, as `adit token \(name)` prints it), never the token itself")
                        }
                        if let owner = tokens[digest] { throw fail(item.node, "this token is also `\(owner)`'s") }
                        tokens[digest] = name
                        user.tokens.append(digest)
                    }
                case "password":
                    guard let text = value.string, let hash = PasswordHash.parse(text) else {
                        throw fail(value, "`password` must be scrypt:N=…,r=…,p=…:<salt>:<hash> as `adit token \(name) --password` prints it, never the password itself")
                    }
                    user.password = hash
                case "certificate", "certificates":
                    for item in try strings(value, key: key, fail: fail) {
                        guard ["CN=", "DNS:", "email:", "URI:", "IP:"].contains(where: { item.text.hasPrefix($0) }) else {
                            throw fail(item.node, "`\(key)` entries are CN=name, DNS:name, email:address, URI:uri or IP:address")
                        }
                        if let owner = certificates[item.text] { throw fail(item.node, "certificate identity `\(item.text)` is also `\(owner)`'s") }
                        certificates[item.text] = name
                        user.certificates.append(item.text)
                    }
                case "allow", "allow-reverse":
                    var patterns: [TargetPattern] = []
                    for item in try strings(value, key: key, fail: fail) {
                        do {
                            patterns.append(try TargetPattern.parse(item.text, flag: key))
                        } catch {
                            throw fail(item.node, error.message)
                        }
                    }
                    if key == "allow" { user.allow = TargetPolicy(patterns: patterns) } else { user.allowReverse = TargetPolicy(patterns: patterns) }
                case "limits":
                    guard let limits = value.mapping else { throw fail(value, "`limits` must be a mapping (sessions, streams)") }
                    for (limitKey, limitValue) in limits {
                        guard let number = limitValue.string.flatMap(Int.init), number >= 1 else {
                            throw fail(limitValue, "`limits.\(limitKey.string ?? "?")` must be a whole number of at least 1")
                        }
                        switch limitKey.string {
                        case "sessions": user.limits.sessions = number
                        case "streams": user.limits.streams = number
                        default: throw fail(limitKey, "unknown limit `\(limitKey.string ?? "?")` (sessions, streams)")
                        }
                    }
                default:
                    throw fail(keyNode, "unknown key `\(key)` for user `\(name)` (name, token, tokens, password, certificate, certificates, allow, allow-reverse, limits)")
                }
            }
            guard !user.tokens.isEmpty || user.password != nil || !user.certificates.isEmpty else {
                throw fail(entry, "user `\(name)` has no credential (token, password or certificate)")
            }
            users.append(user)
        }
        return users
    }

    private static func strings(_ node: Node, key: String, fail: (Node?, String) -> LoadError)
        throws(LoadError) -> [(text: String, node: Node)]
    {
        if let text = node.string, node.sequence == nil { return [(text, node)] }
        guard let items = node.sequence else { throw fail(node, "`\(key)` must be a string or a list of strings") }
        var out: [(String, Node)] = []
        for item in items {
            guard let text = item.string else { throw fail(item, "`\(key)` entries must be strings") }
            out.append((text, item))
        }
        return out
    }
}
