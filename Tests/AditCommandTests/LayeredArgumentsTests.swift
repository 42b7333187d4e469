import AditConfiguration
import ArgumentParser
import Foundation
import Testing

@testable import adit

/// The layering of flags over ADIT_* variables over the --config file, and the file's checks, without processes.
@Suite struct LayeredArgumentsTests {
    let server = ConfigLayering.catalog(named: "server")!
    let client = ConfigLayering.catalog(named: "client")!

    func file(_ text: String) async throws -> ConfigFile {
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("adit-\(UUID().uuidString).yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        defer { try? FileManager.default.removeItem(atPath: path) }
        return try await ConfigFile.load(path: path, catalogs: ConfigLayering.catalogs)
    }

    func fileError(_ text: String) async -> ConfigFileError? {
        do {
            _ = try await file(text)
            return nil
        } catch let error as ConfigFileError {
            return error
        } catch {
            Issue.record("unexpected \(error)")
            return nil
        }
    }

    func setting(_ layered: LayeredArguments, _ key: String) -> LayeredArguments.Setting {
        layered.settings.first { $0.option.key == key }!
    }

    @Test func theCatalogHasEveryOptionOfBothCommandsAndNothingThatActsAndExits() {
        let serverKeys = Set(server.options.map(\.key))
        for key in ["listen", "allow", "allow-reverse", "users", "tls-cert", "window", "compression", "admin", "log-format", "raw"] {
            #expect(serverKeys.contains(key), "server lacks \(key)")
        }
        let clientKeys = Set(client.options.map(\.key))
        for key in ["server", "forward", "reverse", "socks", "http-proxy", "stdio", "proxy", "pin", "insecure", "header", "tls-server-name"] {
            #expect(clientKeys.contains(key), "client lacks \(key)")
        }
        for key in ["help", "version", "config"] {
            #expect(!serverKeys.contains(key) && !clientKeys.contains(key))
        }
        #expect(client.option(forKey: "forward")?.spellings == ["-L"])
        #expect(client.option(forKey: "tls-server-name")?.spellings == ["--tls-server-name", "--sni"])
        #expect(client.option(forKey: "insecure")?.isFlag == true)
        #expect(server.option(forKey: "allow")?.isRepeating == true)
        #expect(server.option(forKey: "listen")?.defaultValue == "127.0.0.1:8080")
        #expect(server.option(forKey: "keepalive-timeout")?.environmentVariable == "ADIT_KEEPALIVE_TIMEOUT")
        #expect(client.positionalKey == "server" && server.positionalKey == nil)
    }

    @Test func flagsWinOverTheEnvironmentWhichWinsOverTheFile() async throws {
        let config = try await file("""
            server:
              listen: 127.0.0.1:1001
              keepalive: 7
              allow: [a:1, b:2]
              window: 1M
            """)
        let layered = try LayeredArguments(catalog: server, commandLine: ["--listen", "127.0.0.1:1003"],
                                           environment: ["ADIT_LISTEN": "127.0.0.1:1002", "ADIT_KEEPALIVE": "9", "PATH": "/bin"],
                                           file: config)
        #expect(setting(layered, "listen").source == .commandLine)
        #expect(setting(layered, "keepalive").source == .environment(variable: "ADIT_KEEPALIVE"))
        #expect(setting(layered, "keepalive").values == ["9"])
        #expect(setting(layered, "allow").source == .file(path: config.path, line: 4, key: "server.allow"))
        #expect(setting(layered, "allow").values == ["a:1", "b:2"])
        #expect(setting(layered, "window").values == ["1M"])
        #expect(setting(layered, "drain-timeout").source == .defaultValue)
        #expect(setting(layered, "idle-timeout").source == .unset)
        let command = try ServerCommand.parse(layered.arguments)
        #expect(command.listen == "127.0.0.1:1003")
        #expect(command.tunnel.keepalive == 9)
        #expect(command.allow == ["a:1", "b:2"])
        #expect(command.tunnel.window == "1M")
        #expect(command.drainTimeout == 30)
    }

    @Test func aListOnTheCommandLineReplacesTheWholeListBelowIt() async throws {
        let config = try await file("server:\n  allow: [a:1, b:2]\n")
        let layered = try LayeredArguments(catalog: server, commandLine: ["--allow=c:3"], environment: ["ADIT_ALLOW": "d:4,e:5"],
                                           file: config)
        #expect(try ServerCommand.parse(layered.arguments).allow == ["c:3"])
        let fromEnvironment = try LayeredArguments(catalog: server, commandLine: [], environment: ["ADIT_ALLOW": "d:4, e:5"],
                                                   file: config)
        #expect(try ServerCommand.parse(fromEnvironment.arguments).allow == ["d:4", "e:5"])
    }

    @Test func aPositionalURLSetsTheClientsServersSoTheFilesListStepsAside() async throws {
        let config = try await file("client:\n  server: [ws://file.example/]\n  forward: 1:a:2\n")
        let layered = try LayeredArguments(catalog: client, commandLine: ["ws://cli.example/"], environment: [:], file: config)
        #expect(setting(layered, "server").source == .commandLine)
        let command = try ClientCommand.parse(layered.arguments)
        #expect(command.url == "ws://cli.example/" && command.server.isEmpty)
        #expect(command.forwards == ["1:a:2"])
        let fromFile = try LayeredArguments(catalog: client, commandLine: [], environment: [:], file: config)
        #expect(try ClientCommand.parse(fromFile.arguments).server == ["ws://file.example/"])
    }

    @Test func switchesFromTheFileAndTheEnvironment() async throws {
        let on = try await file("client:\n  server: wss://x/\n  forward: [1:a:2]\n  insecure: true\n  no-context-takeover: false\n")
        let layered = try LayeredArguments(catalog: client, commandLine: [], environment: [:], file: on)
        let command = try ClientCommand.parse(layered.arguments)
        #expect(command.tls.insecure && !command.compression.noContextTakeover)
        let off = try LayeredArguments(catalog: client, commandLine: [], environment: ["ADIT_INSECURE": "0"], file: on)
        #expect(try !ClientCommand.parse(off.arguments).tls.insecure)
        #expect(throws: LayeringError.self) {
            try LayeredArguments(catalog: client, commandLine: [], environment: ["ADIT_INSECURE": "maybe"], file: nil)
        }
        #expect(throws: LayeringError.self) {
            try LayeredArguments(catalog: server, commandLine: [], environment: ["ADIT_LISTEN": ""], file: nil)
        }
    }

    @Test func headersFromTheEnvironmentKeepTheirCommas() throws {
        let layered = try LayeredArguments(catalog: client, commandLine: ["ws://x/", "-L", "1:a:2"],
                                           environment: ["ADIT_HEADER": "Accept: a, b"], file: nil)
        #expect(try ClientCommand.parse(layered.arguments).header == ["Accept: a, b"])
    }

    @Test func theCommandLineIsReadAsArgumentParserReadsIt() {
        let keys = LayeredArguments.optionsOnCommandLine(
            ["--config", "f.yaml", "ws://x/", "-L", "1:a:2", "--insecure", "--sni=example.com", "-Hx: y", "--", "--proxy"],
            catalog: client)
        #expect(keys == ["server", "forward", "insecure", "tls-server-name", "header"])
        #expect(LayeredArguments.configPath(in: ["--config=a.yaml"], environment: ["ADIT_CONFIG": "b.yaml"]) == "a.yaml")
        #expect(LayeredArguments.configPath(in: [], environment: ["ADIT_CONFIG": "b.yaml"]) == "b.yaml")
        #expect(LayeredArguments.configPath(in: ["--", "--config", "x"], environment: [:]) == nil)
    }

    @Test func valuesFromElsewhereGoBeforeATerminator() throws {
        let layered = try LayeredArguments(catalog: server, commandLine: ["--"], environment: ["ADIT_ALLOW": "a:1"], file: nil)
        #expect(layered.arguments == ["--allow=a:1", "--"])
    }

    @Test func negativeNumbersFromElsewhereStayValues() throws {
        let layered = try LayeredArguments(catalog: server, commandLine: [], environment: ["ADIT_ALLOW": "a:1", "ADIT_DRAIN_TIMEOUT": "-5"],
                                           file: nil)
        #expect(throws: (any Error).self) { try ServerCommand.parse(layered.arguments) }
        #expect(ConfigLayering.attribution(of: "--drain-timeout cannot be negative", in: layered)
                == " (--drain-timeout came from environment ADIT_DRAIN_TIMEOUT)")
        let fine = try LayeredArguments(catalog: server, commandLine: [], environment: ["ADIT_ALLOW": "a:1", "ADIT_DRAIN_TIMEOUT": "5"],
                                        file: nil)
        #expect(try ServerCommand.parse(fine.arguments).drainTimeout == 5)
    }

    @Test func onlyNearMissesOfOurVariablesAreWarnedAbout() {
        let warnings = CheckConfigCommand.unknownVariables(in: ["ADIT_LISTN": "x", "ADIT_BIN": "/x", "ADIT_E2E_TIMEOUT_SCALE": "2", "ADIT_TOKEN": "t"])
        #expect(warnings == ["ADIT_LISTN is not an adit setting (did you mean ADIT_LISTEN?); it is ignored"])
    }

    @Test func fileErrorsNameTheLineAndWhatToWrite() async {
        #expect(await fileError("server:\n  listen: 1\n  alow: [a:1]\n")?.description.hasSuffix(
            "line 3: server.alow: not an option of `adit server` (did you mean `allow`?)") == true)
        #expect(await fileError("client:\n  L: [1:a:2]\n")?.detail == "client.L: not an option of `adit client` (its key is `forward:`)")
        #expect(await fileError("server:\n  --listen: x\n")?.detail == "server.--listen: not an option of `adit server` (write `listen:`, without dashes)")
        #expect(await fileError("server:\n  listen: [a, b]\n")?.line == 2)
        #expect(await fileError("server:\n  listen:\n")?.detail == "server.listen: has no value (remove the line, or give one)")
        #expect(await fileError("server:\n  listen: {a: 1}\n")?.detail == "server.listen: must be one value, not a mapping")
        #expect(await fileError("client:\n  insecure: maybe\n")?.detail == "client.insecure: is a switch: write true or false, not 'maybe'")
        #expect(await fileError("listen: 1\n")?.detail.contains("options go inside a command's section") == true)
        #expect(await fileError("- a\n- b\n")?.detail.hasPrefix("must be a mapping") == true)
        #expect(await fileError("server:\n  listen: \"x\n")?.detail.hasPrefix("is not valid YAML") == true)
        #expect(await fileError("server:\n  allow: [[a]]\n")?.detail == "server.allow: list entries must be plain values")
        let missing = try? await ConfigFile.load(path: "/nonexistent/adit.yaml", catalogs: ConfigLayering.catalogs)
        #expect(missing == nil)
    }

    @Test func anEmptyFileOrSectionSetsNothing() async throws {
        let empty = try await file("")
        #expect(empty.sections.isEmpty)
        let bare = try await file("server:\nclient:\n")
        #expect(bare.sections["server"]?.isEmpty == true)
        let layered = try LayeredArguments(catalog: server, commandLine: [], environment: [:], file: bare)
        #expect(layered.arguments.isEmpty)
    }

    @Test func errorsNameWhereAValueCameFrom() async throws {
        let config = try await file("server:\n  allow: [a:1]\n  keepalive: abc\n")
        let layered = try LayeredArguments(catalog: server, commandLine: [], environment: ["ADIT_DRAIN_TIMEOUT": "-1"], file: config)
        let message = "Error: The value 'abc' is invalid for '--keepalive <seconds>'"
        #expect(ConfigLayering.attribution(of: message, in: layered) == " (--keepalive came from \(config.path) line 3 (server.keepalive))")
        #expect(ConfigLayering.attribution(of: "--drain-timeout cannot be negative", in: layered)
                == " (--drain-timeout came from environment ADIT_DRAIN_TIMEOUT)")
        #expect(ConfigLayering.attribution(of: "--listen is fine", in: layered) == "")
        #expect(ConfigLayering.spellings(in: "use -L or --http-proxy, not a-b or -- alone") == ["-L", "--http-proxy"])
    }

    @Test func secretsAreMasked() {
        #expect(ValueMasking.masked("http://alice:s3cret@proxy:3128/", key: "proxy") == "http://alice:****@proxy:3128/")
        #expect(ValueMasking.masked("http://alice@proxy:3128", key: "proxy") == "http://alice@proxy:3128")
        #expect(ValueMasking.masked("Authorization: Bearer abc", key: "header") == "Authorization: ****")
        #expect(ValueMasking.masked("X-Auth-Token: abc", key: "proxy-header") == "X-Auth-Token: ****")
        #expect(ValueMasking.masked("Accept: */*", key: "header") == "Accept: */*")
    }
}
