import AditGateway
import ArgumentParser
import Foundation

struct TokenCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "token",
        abstract: "Make a credential for a user of `adit server --users`, and print the users-file entry to paste.",
        discussion: """
            A token (the default) is 32 random bytes: the client gets the token (--token-file or ADIT_TOKEN), the users file only its SHA-256, so the file holds no secret. With --password the user gets a password for Basic authentication instead (the client: --user NAME with ADIT_PASSWORD or --password-file), kept in the file as salted scrypt; the password is read from standard input, or made for you.

            Examples:
              adit token alice                       # prints the token, then the entry
              adit token alice --token-file alice.token
              printf '%s' "$PASSWORD" | adit token bob --password
            """)

    @Argument(help: ArgumentHelp("The user's name (letters, digits, . _ @ -). Example: alice", valueName: "name"))
    var name: String

    @Flag(name: .long, help: ArgumentHelp("Make a password entry instead of a token: the password is read from standard input when it is not a terminal, else a random one is made and printed."))
    var password = false

    @Option(name: .long, help: ArgumentHelp("Write the token to this file (readable by its owner only) instead of printing it. Example: --token-file alice.token",
                                            valueName: "file"))
    var tokenFile: String?

    func validate() throws {
        guard !name.isEmpty, name.count <= 64,
            name.unicodeScalars.allSatisfy({ CharacterSet.alphanumerics.contains($0) || "._@-".unicodeScalars.contains($0) })
        else { throw ValidationError("user name '\(name)' may have letters, digits and . _ @ - only (at most 64)") }
        if password && tokenFile != nil { throw ValidationError("--token-file goes with tokens, not --password") }
    }

    func run() throws {
        if password {
            var secret: String
            if isatty(STDIN_FILENO) == 0, let line = readLine(strippingNewline: true), !line.isEmpty {
                secret = line
            } else {
                secret = TokenDigest.makeToken()
                print("password for \(name): \(secret)")
            }
            let hash = try PasswordHash.make(password: secret)
            secret = ""
            print("""
                # users-file entry (paste under `users:`):
                  - name: \(name)
                    password: \(hash)
                """)
            return
        }
        let token = TokenDigest.makeToken()
        if let tokenFile {
            guard FileManager.default.createFile(atPath: tokenFile, contents: Data((token + "\n").utf8),
                                                 attributes: [.posixPermissions: 0o600])
            else { throw ValidationError("cannot write \(tokenFile)") }
            print("token for \(name) written to \(tokenFile) (give it to the client: adit client --token-file \(tokenFile) …)")
        } else {
            print("token for \(name): \(token)")
            print("(the client: ADIT_TOKEN=<token> adit client …, or --token-file FILE; it is shown only now)")
        }
        print("""
            # users-file entry (paste under `users:`):
              - name: \(name)
                token: \(TokenDigest(of: token))
                allow: []            # targets, as --allow; leave out for the server's --allow
            """)
    }
}
