"""examples/ (issue 9): each file is checked by the tool that reads it for real, and the commands in it run.

- Dockerfile: parsed (no Docker daemon here): known instructions, a Swift builder stage new enough for the pinned
  dependencies, a debian:12-slim runtime with only ca-certificates and zlib1g, the binary copied from the
  builder, a non-root USER, a JSON-form ENTRYPOINT.
- docker-compose.yml: `docker compose config -q` (or Debian's docker-compose), the services' keys, and the
  sidecar's command run as an adit client that carries bytes to an echo target.
- kubernetes/: every manifest against the Kubernetes API schemas (kubernetes-validate, strict), the wiring
  between them (Secrets and ConfigMaps mounted where the arguments read them, probes, resources), then the
  gateway's and the sidecar's arguments run with their volumes' contents, bytes through them.
- systemd/: `systemd-analyze verify`, the hardening and stop settings, then both ExecStart lines run as
  systemd would expand them (%d, %i, $VAR, ${VAR}) and ExecReload sent.
- nginx/ and haproxy/: `nginx -t` and `haproxy -c`, then each started on loopback in front of
  `adit server --path /tunnel`: a tunnel through it moves bytes, and the upgrade reaches adit with the
  headers the comments promise.
- users.yaml: a server starts with it; a broken copy is refused with its line; the certificate user gets in
  with its client certificate and only to its own targets.

What stands for the outside world is substituted, and each substitution must match the example exactly, so a
changed example fails here instead of silently testing something else: wss://gateway.example.com/tunnel
becomes a loopback adit server (its certificate made by `adit keygen`, trusted with --ca-file), db.internal:5432
an echo target, listen ports free loopback ports, /etc paths files under the test's tmp dir.
"""

from __future__ import annotations

import json
import os
import re
import urllib.request
import shlex
import shutil
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

import e2e_helpers as H
from test_identities import make_token
from test_tls import keygen

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SERVER_URL = "wss://gateway.example.com/tunnel"
DB = "db.internal:5432"
DRAIN_TIMEOUT = 30   # adit's default --drain-timeout: every stop timeout must be longer


def run(argv, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=H.scaled(timeout),
                          env=H._child_env(), **kw)


def substitute(text: str, pairs) -> str:
    """Replace each (old, new); every `old` must occur in `text` (else the example changed under the test)."""
    for old, new in pairs:
        assert old in text, f"the example no longer contains {old!r}: update this test with it"
        text = text.replace(old, new)
    return text


def replace_values(args: list[str], pairs) -> list[str]:
    """Replace whole arguments; each old value must be one of `args`."""
    args = list(args)
    for old, new in pairs:
        assert old in args, f"the example's arguments no longer contain {old!r}: {args}"
        args = [new if a == old else a for a in args]
    return args


def option(args: list[str], name: str) -> list[str]:
    """Every value given to `name` in an argument list (`--flag value`)."""
    return [args[i + 1] for i, a in enumerate(args[:-1]) if a == name]


def echo_through(port: int, size: int = 256 * H.KiB) -> None:
    payload = os.urandom(size)
    with H.connect_local(port, timeout=10) as s:
        s.settimeout(H.scaled(10))
        s.sendall(payload)
        assert H.recv_exactly(s, size) == payload


def start_process(adit, name: str, argv: list[str]) -> H.AditProcess:
    """A process of the test (nginx, haproxy) stopped by PID at teardown with the adit processes."""
    proc = H.AditProcess(name, [str(a) for a in argv], adit.tmp / f"{name}.log")
    adit.procs.append(proc)
    return proc.start()


def start_example_adit(adit, args: list[str]) -> H.AditProcess:
    """adit with an example's arguments, whose first word is the command (`client`, `server`)."""
    assert args and args[0] in ("client", "server"), args
    return adit._start(args[0], args[1:])


def gateway(adit, adit_bin, tmp_path, echo_port: int, user: str):
    """A wss:// adit server on loopback standing in for gateway.example.com: --path /tunnel, and a users file
    with one user (a fresh token) allowed to reach the echo target. Returns (server, cert, token)."""
    cert, key, _, _ = keygen(adit_bin, tmp_path, "gateway", "--name", "localhost", "--ip", "127.0.0.1")
    token, digest = make_token(adit_bin, user)
    users = tmp_path / "gateway-users.yaml"
    users.write_text(f'users:\n  - name: {user}\n    token: "{digest}"\n    allow: ["127.0.0.1:{echo_port}"]\n')
    server = adit.server([], extra=["--path", "/tunnel", "--tls-cert", str(cert), "--tls-key", str(key),
                                    "--users", str(users)])
    return server, cert, token


def localize_client(args: list[str], server, cert: Path, echo_port: int) -> tuple[list[str], list[int]]:
    """An example's client arguments pointed at the loopback gateway, each -L at a free port and the echo
    target (its bind address kept). Returns the arguments and the local ports."""
    args = replace_values(args, [(SERVER_URL, f"wss://127.0.0.1:{server.port}/tunnel")])
    ports = []
    for i, a in enumerate(args[:-1]):
        if a == "-L":
            bind, _port, _host, _hport = args[i + 1].rsplit(":", 3)
            assert bind in ("127.0.0.1", "0.0.0.0"), args[i + 1]
            ports.append(H.free_port())
            args[i + 1] = f"127.0.0.1:{ports[-1]}:127.0.0.1:{echo_port}"   # loopback only, whatever the bind
    assert ports, f"no -L forward in {args}"
    return args + ["--ca-file", str(cert)], ports


# ---------------------------------------------------------------------------
# Dockerfile

DOCKERFILE_INSTRUCTIONS = {"ADD", "ARG", "CMD", "COPY", "ENTRYPOINT", "ENV", "EXPOSE", "FROM", "HEALTHCHECK",
                           "LABEL", "MAINTAINER", "ONBUILD", "RUN", "SHELL", "STOPSIGNAL", "USER", "VOLUME",
                           "WORKDIR"}


def parse_dockerfile(text: str) -> list[tuple[int, str, str]]:
    """(line, INSTRUCTION, arguments) as Docker reads them: `\\` continues a line, comment lines are dropped
    (also inside a continued instruction)."""
    out, buf, start = [], None, 0
    for n, raw in enumerate(text.splitlines(), 1):
        s = raw.strip()
        if s.startswith("#") or (buf is None and not s):
            continue
        if buf is None:
            buf, start = "", n
        if s.endswith("\\"):
            buf += s[:-1].rstrip() + " "
            continue
        buf += s
        word, _, rest = buf.partition(" ")
        out.append((start, word, rest.strip()))
        buf = None
    assert buf is None, "the Dockerfile ends inside a continued line"
    return out


def tools_version(manifest: Path) -> tuple[int, ...]:
    first = manifest.read_text().splitlines()[0]
    m = re.match(r"//\s*swift-tools-version:\s*([0-9.]+)", first)
    assert m, f"{manifest}: no swift-tools-version line"
    return tuple(int(x) for x in m.group(1).split("."))


def oldest_swift_for(package: Path) -> tuple[int, ...]:
    """The oldest Swift that can read a package: its Package.swift's tools version, or a Package@swift-X.swift
    that toolchain X and later prefer (with the tools version that one declares)."""
    options = [tools_version(package / "Package.swift")]
    for variant in package.glob("Package@swift-*.swift"):
        v = tuple(int(x) for x in variant.name[len("Package@swift-"):-len(".swift")].split("."))
        options.append(max(v, tools_version(variant)))
    return min(options)


def needed_swift() -> tuple[tuple[int, ...], str]:
    """The oldest Swift that reads this package and every dependency checked out by the build (.build/checkouts,
    there after `swift build`); without a checkout, the package's own tools version."""
    need, why = tools_version(REPO / "Package.swift"), "Package.swift"
    checkouts = REPO / ".build" / "checkouts"
    if checkouts.is_dir():
        for pkg in sorted(p for p in checkouts.iterdir() if (p / "Package.swift").is_file()):
            v = oldest_swift_for(pkg)
            if v > need:
                need, why = v, pkg.name
    return need, why


def test_dockerfile_builds_in_swift_and_runs_as_non_root_on_debian_slim():
    text = (EXAMPLES / "Dockerfile").read_text()
    instrs = parse_dockerfile(text)
    for line, word, _ in instrs:
        assert word in DOCKERFILE_INSTRUCTIONS, f"Dockerfile:{line}: {word!r} is not a Dockerfile instruction"
    first_from = next(i for i, (_, w, _) in enumerate(instrs) if w == "FROM")
    assert all(w == "ARG" for _, w, _ in instrs[:first_from]), "only ARG may come before the first FROM"
    global_args = dict(a.split("=", 1) for _, _, a in instrs[:first_from])

    stages, names = [], []
    for line, word, rest in instrs[first_from:]:
        if word == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m, f"Dockerfile:{line}: FROM {rest!r}"
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: global_args[v.group(1) or v.group(2)], m.group(1))
            stages.append({"image": image, "name": m.group(2), "instrs": []})
        else:
            stages[-1]["instrs"].append((line, word, rest))
    assert len(stages) == 2, f"two stages (builder, runtime), not {len(stages)}"
    builder, runtime = stages

    # The builder: an official Swift image that can read every pinned dependency's manifest.
    m = re.fullmatch(r"swift:(\d+)\.(\d+)(?:\.\d+)?-bookworm", builder["image"])
    assert m, f"the builder is {builder['image']}, not an official swift:X.Y-bookworm image"
    need, why = needed_swift()
    assert (int(m.group(1)), int(m.group(2))) >= need[:2], (
        f"{builder['image']} is older than Swift {'.'.join(map(str, need))}, which {why} needs")
    assert builder["name"], "the builder stage needs a name for COPY --from"
    runs = " ".join(r for _, w, r in builder["instrs"] if w == "RUN")
    assert "zlib1g-dev" in runs
    build = re.search(r"swift build ([^&;]*)", runs)
    assert build, "no `swift build` in the builder"
    flags = build.group(1).split()
    for f in ("-c", "release", "--product", "adit", "--static-swift-stdlib"):
        assert f in flags, f"`swift build` lacks {f}: {build.group(0)}"
    ignored = [ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]
    assert ".build" in ignored, ".dockerignore must keep .build (host build outputs) out of the context"
    for line, word, rest in builder["instrs"]:
        if word in ("COPY", "ADD"):
            *sources, _dest = [a for a in rest.split() if not a.startswith("--")]
            for src in sources:
                assert (REPO / src).exists(), f"Dockerfile:{line}: {src} is not in the build context"
                assert src.rstrip("/") not in ignored, f"Dockerfile:{line}: {src} is excluded by .dockerignore"

    # The runtime: debian:12-slim with only what the static binary needs.
    assert runtime["image"] == "debian:12-slim"
    installed = set()
    for _, word, rest in runtime["instrs"]:
        if word == "RUN":
            for cmd in re.split(r"&&|;", rest):
                words = cmd.split()
                if words[:2] == ["apt-get", "install"]:
                    installed |= {w for w in words[2:] if not w.startswith("-")}
    assert installed == {"ca-certificates", "zlib1g"}, installed
    copies = [rest for _, w, rest in runtime["instrs"] if w == "COPY"]
    from_builder = [c for c in copies if f"--from={builder['name']}" in c.split()]
    assert from_builder, f"the runtime copies nothing from the {builder['name']} stage: {copies}"
    src, dest = [a for a in from_builder[0].split() if not a.startswith("--")]
    assert dest == "/usr/local/bin/adit"
    assert src in runs, f"the builder never writes {src}"
    users = [rest for _, w, rest in runtime["instrs"] if w == "USER"]
    assert users, "the runtime runs as root: no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"USER {users[-1]} is root"
    last_user = max(i for i, (_, w, _) in enumerate(runtime["instrs"]) if w == "USER")
    assert all(w != "RUN" for _, w, _ in runtime["instrs"][last_user:]), "a RUN after USER would need root"
    entry = [rest for _, w, rest in runtime["instrs"] if w == "ENTRYPOINT"]
    assert len(entry) == 1
    assert json.loads(entry[0]) == ["adit"], f"ENTRYPOINT must be the JSON form [\"adit\"], not {entry[0]}"
    assert ("STOPSIGNAL", "SIGTERM") in [(w, r) for _, w, r in runtime["instrs"]]


# ---------------------------------------------------------------------------
# docker-compose.yml


def compose_command() -> list[str] | None:
    if shutil.which("docker") and run(["docker", "compose", "version"]).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def duration_seconds(text: str) -> float:
    total = 0.0
    for value, unit in re.findall(r"(\d+(?:\.\d+)?)(h|ms|m|s)", text):
        total += float(value) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001}[unit]
    return total


def test_compose_file_passes_compose_config(tmp_path):
    cmd = compose_command()
    if cmd is None:
        pytest.skip("neither `docker compose` nor docker-compose is installed (Tests/e2e/ensure-deps.sh installs it)")
    # `config` validates against the Compose schema and needs no daemon.
    r = run(cmd + ["-f", EXAMPLES / "docker-compose.yml", "config", "-q"])
    assert r.returncode == 0, f"{' '.join(cmd)} config: {r.stdout}{r.stderr}"
    # The check has teeth: a misspelt key is refused.
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(substitute((EXAMPLES / "docker-compose.yml").read_text(),
                                 [("    stop_grace_period:", "    stop_grace_priod:")]))
    r = run(cmd + ["-f", broken, "config", "-q"])
    assert r.returncode != 0 and "stop_grace_priod" in r.stdout + r.stderr, r.stdout + r.stderr


def test_compose_sidecar_forwards_the_database_port(adit, adit_bin, targets, tmp_path):
    yaml = pytest.importorskip("yaml")
    doc = yaml.safe_load((EXAMPLES / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"app", "adit-sidecar"}
    app, sidecar = services["app"], services["adit-sidecar"]
    assert app["environment"]["PGHOST"] == "adit-sidecar" and str(app["environment"]["PGPORT"]) == "5432"
    assert "adit-sidecar" in app["depends_on"]
    for name, svc in services.items():
        assert svc.get("restart") in ("always", "unless-stopped", "on-failure"), f"{name}: restart policy"
    build = sidecar["build"]
    assert (EXAMPLES / build["context"] / build["dockerfile"]).resolve() == (EXAMPLES / "Dockerfile").resolve()
    cmd = [str(a) for a in sidecar["command"]]
    assert cmd[0] == "client" and SERVER_URL in cmd
    assert option(cmd, "-L") == [f"0.0.0.0:5432:{DB}"]
    assert option(cmd, "--token-file") == ["/run/secrets/adit_token"]
    assert "adit_token" in sidecar["secrets"] and "file" in doc["secrets"]["adit_token"]
    assert sidecar.get("stop_signal", "SIGTERM") == "SIGTERM"
    assert duration_seconds(sidecar["stop_grace_period"]) > DRAIN_TIMEOUT

    # The command itself, with the secret where Docker would mount it: bytes reach the "database".
    echo = targets.echo()
    server, cert, token = gateway(adit, adit_bin, tmp_path, echo.port, "app-sidecar")
    (tmp_path / "adit_token").write_text(token + "\n")
    args, (local,) = localize_client(replace_values(cmd, [("/run/secrets/adit_token", str(tmp_path / "adit_token"))]),
                                     server, cert, echo.port)
    client = start_example_adit(adit, args)
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    echo_through(local)


# ---------------------------------------------------------------------------
# Kubernetes


def k8s_docs() -> dict[str, list[dict]]:
    yaml = pytest.importorskip("yaml")
    files = sorted((EXAMPLES / "kubernetes").glob("*.yaml"))
    assert files, "no manifests in examples/kubernetes"
    return {f.name: [d for d in yaml.safe_load_all(f.read_text()) if d is not None] for f in files}


def k8s_objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for docs in k8s_docs().values() for d in docs}


def test_kubernetes_manifests_pass_the_api_schemas():
    kv = pytest.importorskip("kubernetes_validate",
                             reason="kubernetes-validate is not installed (Tests/e2e/ensure-deps.sh installs it)")
    # 1.29: the oldest release the sidecar's comment promises (native sidecars); and the newest schema known.
    versions = ["1.29", kv.latest_version()]
    for name, docs in k8s_docs().items():
        for doc in docs:
            for version in versions:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    pytest.fail(f"{name}: {doc['kind']}/{doc['metadata']['name']} fails Kubernetes {version}: {e}")
    # The validation has teeth: a misspelt field is refused in strict mode.
    deployment = next(d for d in k8s_docs()["app-with-sidecar.yaml"] if d["kind"] == "Deployment")
    broken = json.loads(json.dumps(deployment).replace('"livenessProbe"', '"livenesProbe"', 1))
    with pytest.raises(kv.ValidationError):
        kv.validate(broken, kv.latest_version(), strict=True)


def containers(deployment: dict) -> dict[str, dict]:
    spec = deployment["spec"]["template"]["spec"]
    return {c["name"]: c for c in spec.get("initContainers", []) + spec["containers"]}


def test_kubernetes_manifests_are_wired_together():
    objs = k8s_objects()
    text = {name: (EXAMPLES / "kubernetes" / name).read_text() for name in k8s_docs()}
    for (kind, name), d in objs.items():
        if kind != "Deployment":
            continue
        pod = d["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] > DRAIN_TIMEOUT, f"{name}: the drain would be cut short"
        assert d["spec"]["selector"]["matchLabels"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        for cname, c in containers(d).items():
            res = c.get("resources", {})
            assert res.get("requests") and res.get("limits"), f"{name}/{cname}: resource requests and limits"
            assert "readinessProbe" in c and "livenessProbe" in c, f"{name}/{cname}: readiness and liveness probes"
            for m in c.get("volumeMounts", []):
                v = volumes[m["name"]]
                if "secret" in v:
                    assert ("Secret", v["secret"]["secretName"]) in objs, f"{name}: no Secret {v['secret']}"
                if "configMap" in v:
                    assert ("ConfigMap", v["configMap"]["name"]) in objs, f"{name}: no ConfigMap {v['configMap']}"
            if c.get("image", "").split("/")[-1].startswith("adit:"):
                sc = c.get("securityContext", {})
                assert sc.get("allowPrivilegeEscalation") is False and sc.get("readOnlyRootFilesystem") is True
    # The adit containers are probed on their admin listener: readiness on /readyz, liveness on /healthz.
    sidecar = containers(objs[("Deployment", "billing")])["adit-sidecar"]
    assert sidecar["args"][0] == "client" and SERVER_URL in sidecar["args"]
    assert option(sidecar["args"], "-L") == [f"127.0.0.1:5432:{DB}"]
    server = containers(objs[("Deployment", "adit-gateway")])["adit"]
    for c in (sidecar, server):
        admin_port = int(option(c["args"], "--admin")[0].rsplit(":", 1)[1])
        named = {p["name"]: p["containerPort"] for p in c["ports"]}
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c[probe]["httpGet"]
            assert get["path"] == path and named.get(get["port"], get["port"]) == admin_port, (probe, get)
    service = objs[("Service", "adit-gateway")]
    assert service["spec"]["ports"][0]["port"] == 443
    assert service["spec"]["ports"][0]["targetPort"] in [p["name"] for p in server["ports"]]
    assert option(server["args"], "--path") == ["/tunnel"]
    assert objs[("Secret", "adit-gateway-tls")]["type"] == "kubernetes.io/tls"


def materialize_volumes(deployment: dict, container: dict, tmp: Path, replace: dict) -> dict[str, Path]:
    """What the kubelet would mount: each volume of the container as a directory with its Secret's or
    ConfigMap's keys as files. `replace[(object name, key)]` stands in for a placeholder value."""
    objs = k8s_objects()
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {}
    for m in container["volumeMounts"]:
        v = volumes[m["name"]]
        if "secret" in v:
            obj_name = v["secret"]["secretName"]
            data = dict(objs[("Secret", obj_name)]["stringData"])
        else:
            obj_name = v["configMap"]["name"]
            data = dict(objs[("ConfigMap", obj_name)]["data"])
        d = tmp / f"volume-{m['name']}"
        d.mkdir()
        for key, value in data.items():
            (d / key).write_text(replace.get((obj_name, key), value))
        mounts[m["mountPath"].rstrip("/")] = d
    return mounts


def localize_paths(args: list[str], mounts: dict[str, Path]) -> list[str]:
    out = []
    for a in args:
        for mount, d in mounts.items():
            if a.startswith(mount + "/"):
                a = str(d / a[len(mount) + 1:])
                assert Path(a).is_file(), f"the argument {a} names no key of the volume mounted at {mount}"
        out.append(a)
    return out


def test_kubernetes_gateway_and_sidecar_carry_bytes(adit, adit_bin, targets, tmp_path):
    objs = k8s_objects()
    echo = targets.echo()
    cert, key, _, _ = keygen(adit_bin, tmp_path, "gateway", "--name", "localhost", "--ip", "127.0.0.1")
    token, digest = make_token(adit_bin, "app-sidecar")
    users = objs[("ConfigMap", "adit-gateway-users")]["data"]["users.yaml"]
    example_digest = re.search(r"sha256:[0-9a-f]{64}", users).group(0)

    gw = objs[("Deployment", "adit-gateway")]
    adit_c = containers(gw)["adit"]
    mounts = materialize_volumes(gw, adit_c, tmp_path, {
        ("adit-gateway-tls", "tls.crt"): cert.read_text(),
        ("adit-gateway-tls", "tls.key"): key.read_text(),
        ("adit-gateway-users", "users.yaml"): substitute(users, [(example_digest, digest),
                                                                (DB, f"127.0.0.1:{echo.port}")]),
    })
    port, server_admin, client_admin = H.free_port(), H.free_port(), H.free_port()
    args = replace_values(localize_paths(adit_c["args"], mounts), [
        ("0.0.0.0:8443", f"127.0.0.1:{port}"), (DB, f"127.0.0.1:{echo.port}"),
        ("0.0.0.0:9090", f"127.0.0.1:{server_admin}")])
    server = start_example_adit(adit, args)
    server.wait_for_log(f"listening on wss://127.0.0.1:{port}/tunnel", timeout=10)
    server.port = port

    billing = objs[("Deployment", "billing")]
    sidecar = containers(billing)["adit-sidecar"]
    mounts = materialize_volumes(billing, sidecar, tmp_path, {("adit-client-token", "token"): token})
    args, (local,) = localize_client(localize_paths(sidecar["args"], mounts), server, cert, echo.port)
    args = replace_values(args, [("0.0.0.0:9090", f"127.0.0.1:{client_admin}")])
    client = start_example_adit(adit, args)
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    echo_through(local)
    line = server.wait_for_log("tunnel opened", timeout=5)
    assert "app-sidecar" in line, f"the tunnel was not the ConfigMap's user: {line}"
    # What the kubelet's probes would get: ready on both, healthy on both.
    for admin in (server_admin, client_admin):
        for path in ("/readyz", "/healthz"):
            with urllib.request.urlopen(f"http://127.0.0.1:{admin}{path}", timeout=H.scaled(5)) as r:
                assert r.status == 200, (admin, path, r.status)


# ---------------------------------------------------------------------------
# systemd


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections of a unit file: key -> every value it is given (LoadCredential= repeats), continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current, buf = None, None
    for raw in text.splitlines():
        s = raw.strip()
        if buf is None and (not s or s[0] in "#;"):
            continue
        if buf is not None and s[:1] in ("#", ";"):
            continue
        if buf is None and s.startswith("[") and s.endswith("]"):
            current = sections.setdefault(s[1:-1], {})
            continue
        buf = (buf or "") + (s[:-1] + " " if s.endswith("\\") else s)
        if s.endswith("\\"):
            continue
        k, _, v = buf.partition("=")
        current.setdefault(k.strip(), []).append(v.strip())
        buf = None
    return sections


def expand_exec(line: str, env: dict[str, str], specifiers: dict[str, str]) -> list[str]:
    """An Exec line as systemd runs it: specifiers (%d, %i), `$VAR` alone split into words, `${VAR}` as one."""
    words = []
    for w in shlex.split(line):
        for spec, value in specifiers.items():
            w = w.replace(spec, value)
        m = re.fullmatch(r"\$(\w+)", w)
        if m:
            words += env[m.group(1)].split()
        else:
            words.append(re.sub(r"\$\{(\w+)\}", lambda v: env[v.group(1)], w))
    return words


def parse_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            k, _, v = line.partition("=")
            env[k.strip()] = v.strip()
    return env


def _systemd_analyze_unusable() -> str | None:
    """Why systemd-analyze cannot verify even a trivial unit in this container (then nothing it says about the
    examples means anything), or None. None too when it is not installed: that is for ensure-deps.sh to fix."""
    exe = shutil.which("systemd-analyze")
    if not exe:
        return None
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        unit = Path(d) / "adit-examples-control.service"
        unit.write_text("[Unit]\nDescription=control\n[Service]\nExecStart=/bin/true\n")
        try:
            r = subprocess.run([exe, "verify", str(unit)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError) as e:
            return f"systemd-analyze verify cannot run here: {e}"
        if r.returncode != 0 or (r.stdout + r.stderr).strip():
            return f"systemd-analyze verify fails on a trivial unit here: {(r.stdout + r.stderr).strip()[:300]}"
    return None


SYSTEMD_ANALYZE_UNUSABLE = _systemd_analyze_unusable()


def units_with_binary(tmp: Path, adit_bin) -> Path:
    d = tmp / "units"
    d.mkdir()
    for unit in ("adit-server.service", "adit-client@.service"):
        (d / unit).write_text(substitute((EXAMPLES / "systemd" / unit).read_text(),
                                         [("/usr/local/bin/adit ", f"{adit_bin} ")]))
    return d


@pytest.mark.ci_may_skip(SYSTEMD_ANALYZE_UNUSABLE is not None,
                         reason="systemd-analyze cannot verify even a trivial unit in this container")
def test_systemd_units_pass_systemd_analyze_verify(adit_bin, tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Tests/e2e/ensure-deps.sh installs systemd)")
    if SYSTEMD_ANALYZE_UNUSABLE:
        pytest.skip(SYSTEMD_ANALYZE_UNUSABLE)
    d = units_with_binary(tmp_path, adit_bin)

    def verify(*units):
        r = run(["systemd-analyze", "verify", *[d / u for u in units]], timeout=60)
        # Unknown or misspelt keys are only warnings (exit 0): any line about our units is a failure.
        about_us = [ln for ln in (r.stdout + r.stderr).splitlines() if "adit" in ln]
        return r.returncode, about_us

    rc, lines = verify("adit-server.service", "adit-client@office.service")
    assert rc == 0 and not lines, f"systemd-analyze verify (exit {rc}):\n" + "\n".join(lines)
    # The check has teeth: a misspelt hardening option is reported.
    (d / "adit-server.service").write_text(substitute((d / "adit-server.service").read_text(),
                                                      [("ProtectSystem=strict", "ProtectSytem=strict")]))
    rc, lines = verify("adit-server.service")
    assert any("ProtectSytem" in ln for ln in lines), lines


def test_systemd_units_harden_drain_and_reload():
    for unit in ("adit-server.service", "adit-client@.service"):
        svc = parse_unit((EXAMPLES / "systemd" / unit).read_text())["Service"]
        one = {k: v[-1] for k, v in svc.items()}
        assert one.get("DynamicUser") == "yes" or one.get("User") not in (None, "", "root"), f"{unit}: runs as root"
        for k, v in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                     "KillSignal": "SIGTERM"}.items():
            assert one.get(k) == v, f"{unit}: {k}={one.get(k)}, want {v}"
        stop = one["TimeoutStopSec"]
        assert (float(stop) if stop.isdigit() else duration_seconds(stop)) > DRAIN_TIMEOUT, \
            f"{unit}: TimeoutStopSec={stop} must exceed --drain-timeout ({DRAIN_TIMEOUT} s)"
    server = parse_unit((EXAMPLES / "systemd" / "adit-server.service").read_text())["Service"]
    assert server["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


def test_systemd_units_commands_run(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    cert, key, _, _ = keygen(adit_bin, tmp_path, "gateway", "--name", "localhost", "--ip", "127.0.0.1")
    token, digest = make_token(adit_bin, "office")

    # The server: its credentials as LoadCredential= would place them, examples/users.yaml as the users file
    # with one more user for this test.
    svc = parse_unit((EXAMPLES / "systemd" / "adit-server.service").read_text())["Service"]
    creds = tmp_path / "server-credentials"
    creds.mkdir()
    sources = {"/etc/adit/cert.pem": cert, "/etc/adit/key.pem": key}
    for spec in svc["LoadCredential"]:
        name, _, path = spec.partition(":")
        shutil.copy(sources[path], creds / name)
    users = tmp_path / "users.yaml"
    users.write_text((EXAMPLES / "users.yaml").read_text() +
                     f'  - name: office\n    token: "{digest}"\n    allow: ["127.0.0.1:{echo.port}"]\n')
    port, metrics = H.free_port(), H.free_port()
    (exec_start,) = svc["ExecStart"]
    argv = expand_exec(exec_start, {}, {"%d": str(creds)})
    assert argv[0] == "/usr/local/bin/adit"
    argv = replace_values(argv[1:], [("0.0.0.0:443", f"127.0.0.1:{port}"), ("/etc/adit/users.yaml", str(users)),
                                     ("127.0.0.1:9100", f"127.0.0.1:{metrics}"), (DB, f"127.0.0.1:{echo.port}")])
    server = start_example_adit(adit, argv)
    server.wait_for_log(f"listening on wss://127.0.0.1:{port}/", timeout=10)
    server.port = port

    # ExecReload as systemd runs it: the server re-reads its users file.
    mark = server.log_mark()
    (reload,) = svc["ExecReload"]
    r = run(expand_exec(reload, {"MAINPID": str(server.pid)}, {}))
    assert r.returncode == 0, r.stderr
    server.wait_for_log("SIGHUP: reloading", timeout=5, since=mark)

    # The client template, instance "office": /etc/adit/office.env is examples/systemd/office.env.
    svc = parse_unit((EXAMPLES / "systemd" / "adit-client@.service").read_text())["Service"]
    assert svc["EnvironmentFile"] == ["/etc/adit/%i.env"]
    env = parse_env_file(EXAMPLES / "systemd" / "office.env")
    creds = tmp_path / "client-credentials"
    creds.mkdir()
    for spec in svc["LoadCredential"]:
        name, _, path = spec.partition(":")
        assert path == "/etc/adit/%i.token"
        (creds / name).write_text(token + "\n")
    (exec_start,) = svc["ExecStart"]
    argv = expand_exec(exec_start, env, {"%d": str(creds), "%i": "office"})
    assert argv[0] == "/usr/local/bin/adit"
    args, locals_ = localize_client(argv[1:], server, cert, echo.port)
    client = start_example_adit(adit, args)
    for local in locals_:
        H.wait_tunnel_ready(local, timeout=15, proc=client)
        echo_through(local)


# ---------------------------------------------------------------------------
# nginx and haproxy in front of adit server --path /tunnel


def nginx_config(tmp: Path, cert: Path, key: Path, port: int, upstream: int) -> Path:
    site = tmp / "adit.conf"
    site.write_text(substitute((EXAMPLES / "nginx" / "adit.conf").read_text(), [
        ("listen 443 ssl;", f"listen 127.0.0.1:{port} ssl;"),
        ("/etc/letsencrypt/live/gateway.example.com/fullchain.pem", str(cert)),
        ("/etc/letsencrypt/live/gateway.example.com/privkey.pem", str(key)),
        ("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};"),
    ]))
    # The example is a conf.d file: the smallest nginx.conf around it, everything nginx writes under tmp, one
    # process (so that stopping it by PID stops all of it).
    main = tmp / "nginx.conf"
    temp = {k: tmp / f"nginx-{k}" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")}
    main.write_text(f"""
pid {tmp}/nginx.pid;
error_log stderr notice;
daemon off;
master_process off;
events {{ worker_connections 256; }}
http {{
    access_log {tmp}/nginx-access.log;
    {' '.join(f'{k}_temp_path {v};' for k, v in temp.items())}
    include {site};
}}
""")
    return main


def haproxy_config(tmp: Path, cert: Path, key: Path, port: int, upstream: int, run_here: bool) -> Path:
    pem = tmp / "haproxy.pem"   # haproxy wants the certificate and its key in one file
    pem.write_text(cert.read_text() + key.read_text())
    pem.chmod(0o600)
    pairs = [("bind :443 ssl crt /etc/haproxy/certs/gateway.example.com.pem",
              f"bind 127.0.0.1:{port} ssl crt {pem}"),
             ("server adit1 127.0.0.1:8080", f"server adit1 127.0.0.1:{upstream}")]
    if run_here:
        # To run it in the test (maybe without root, without syslog, under a container's descriptor limit): logs
        # to standard error, no chroot, no change of user, fewer connections. Routing and timeouts stay as they are.
        pairs += [("log /dev/log local0", "log stderr format raw local0"), ("maxconn 20000", "maxconn 1000"),
                  ("    chroot /var/lib/haproxy\n", ""), ("    user haproxy\n", ""), ("    group haproxy\n", "")]
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(substitute((EXAMPLES / "haproxy" / "haproxy.cfg").read_text(), pairs))
    return cfg


FRONTS = ["nginx", "haproxy"]


def need_front(front: str) -> str:
    exe = shutil.which(front) or next((p for p in (f"/usr/sbin/{front}",) if os.access(p, os.X_OK)), None)
    if not exe:
        pytest.skip(f"{front} is not installed (Tests/e2e/ensure-deps.sh installs it)")
    return exe


def start_front(front: str, adit, adit_bin, tmp_path, upstream: int) -> tuple[int, Path]:
    """The example front on a free loopback port with a certificate for 127.0.0.1; returns (port, cert)."""
    exe = need_front(front)
    cert, key, _, _ = keygen(adit_bin, tmp_path, front, "--ip", "127.0.0.1")
    port = H.free_port()
    if front == "nginx":
        proc = start_process(adit, "nginx", [exe, "-c", nginx_config(tmp_path, cert, key, port, upstream),
                                             "-p", tmp_path, "-e", "stderr"])
    else:
        proc = start_process(adit, "haproxy", [exe, "-db", "-f",
                                               haproxy_config(tmp_path, cert, key, port, upstream, run_here=True)])
    H.wait_for_port(port, timeout=10, proc=proc, connect=False)
    return port, cert


@pytest.mark.parametrize("front", FRONTS)
def test_front_config_passes_its_own_check(front, adit_bin, tmp_path):
    exe = need_front(front)
    cert, key, _, _ = keygen(adit_bin, tmp_path, front, "--ip", "127.0.0.1")
    if front == "nginx":
        r = run([exe, "-t", "-c", nginx_config(tmp_path, cert, key, H.free_port(), H.free_port()),
                 "-p", tmp_path, "-e", "stderr"])
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "test is successful" in out, out
        assert "[warn]" not in out and "[emerg]" not in out, out
    else:
        # The whole file as it is (chroot, user haproxy, syslog) but for the certificate's path and the ports.
        r = run([exe, "-c", "-f", haproxy_config(tmp_path, cert, key, H.free_port(), H.free_port(),
                                                 run_here=False)])
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Configuration file is valid" in out, out
        assert "[WARNING]" not in out and "[ALERT]" not in out, out


@pytest.mark.parametrize("front", FRONTS)
def test_a_tunnel_through_the_front_carries_bytes(front, adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    upstream = H.free_port()
    server = adit.server([f"127.0.0.1:{echo.port}"], port=upstream, extra=["--path", "/tunnel"])
    port, cert = start_front(front, adit, adit_bin, tmp_path, upstream)
    local = H.free_port()
    client = adit.client(f"wss://127.0.0.1:{port}/tunnel", [(local, "127.0.0.1", echo.port)],
                         extra=["--ca-file", str(cert)])
    H.wait_tunnel_ready(local, timeout=15, proc=client)
    echo_through(local, size=4 * H.MiB)
    server.wait_for_log("tunnel opened", timeout=5)


def capture_request(conn: socket.socket, server) -> str:
    """An upstream that records the request head it gets and refuses it."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    if data:
        conn.sendall(b"HTTP/1.1 426 Upgrade Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    return data.decode(errors="replace")


def tls_request(port: int, cert: Path, path: str, headers: list[tuple[str, str]]) -> str:
    ctx = ssl.create_default_context(cafile=str(cert))
    head = [f"GET {path} HTTP/1.1", "Host: gateway.example.com"] + [f"{k}: {v}" for k, v in headers]
    with socket.create_connection(("127.0.0.1", port), timeout=H.scaled(10)) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = s.recv(4096)
                if not chunk:
                    break
                answer += chunk
    return answer.decode(errors="replace")


def header_values(request: str, name: str) -> list[str]:
    return [ln.split(":", 1)[1].strip() for ln in request.split("\r\n")[1:]
            if ln.lower().startswith(name.lower() + ":")]


@pytest.mark.parametrize("front", FRONTS)
def test_the_front_passes_the_upgrade_with_forwarded_headers(front, adit, adit_bin, targets, tmp_path):
    upstream = targets.custom("upstream", capture_request)
    port, cert = start_front(front, adit, adit_bin, tmp_path, upstream.port)
    upgrade = [("Upgrade", "websocket"), ("Connection", "Upgrade"), ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
               ("Sec-WebSocket-Version", "13"), ("Sec-WebSocket-Protocol", "adit.v1"),
               ("Authorization", "Bearer example-token"), ("X-Forwarded-For", "203.0.113.66")]
    answer = tls_request(port, cert, "/tunnel", upgrade)
    assert answer.startswith("HTTP/1.1 426"), answer
    requests = [r for r in H.wait_until(lambda: [r for r in upstream.results if r], timeout=10,
                                        what="the upgrade at the upstream")]
    req = requests[0]
    assert req.startswith("GET /tunnel HTTP/1.1\r\n"), req
    assert header_values(req, "Upgrade") == ["websocket"], req
    assert "upgrade" in [v.lower() for v in header_values(req, "Connection")], req
    assert header_values(req, "Authorization") == ["Bearer example-token"], req
    assert header_values(req, "Sec-WebSocket-Protocol") == ["adit.v1"], req
    # The front is the first hop: the client's own X-Forwarded-For is replaced by its address.
    assert header_values(req, "X-Forwarded-For") == ["127.0.0.1"], req
    assert header_values(req, "X-Forwarded-Proto") == ["https"], req

    # Anything but /tunnel stays at the front.
    before = len([r for r in upstream.results if r])
    answer = tls_request(port, cert, "/admin", upgrade)
    assert answer.startswith("HTTP/1.1 404"), answer
    assert len([r for r in upstream.results if r]) == before


# ---------------------------------------------------------------------------
# users.yaml


def test_users_example_has_each_kind_of_user_and_starts_a_server(adit):
    yaml = pytest.importorskip("yaml")
    users = yaml.safe_load((EXAMPLES / "users.yaml").read_text())["users"]
    kinds = {u["name"]: ({"token", "password", "certificate"} & set(u)) for u in users}
    assert sorted(k for ks in kinds.values() for k in ks) == ["certificate", "password", "token"], kinds
    for u in users:
        assert u.get("allow") and u.get("limits"), f"{u['name']}: its own allow and limits"
    assert sum("allow-reverse" in u for u in users) >= 2
    server = adit.server([], extra=["--users", str(EXAMPLES / "users.yaml")])
    server.wait_for_log(f"listening on ws://127.0.0.1:{server.port}/", timeout=10)
    server.wait_for_log(f"{len(users)} user(s) from {EXAMPLES / 'users.yaml'}", timeout=5)


def test_a_broken_copy_of_the_users_example_is_refused_with_its_line(adit_bin, tmp_path):
    lines = (EXAMPLES / "users.yaml").read_text().splitlines(keepends=True)
    n = next(i for i, ln in enumerate(lines) if ln.strip().startswith("allow:"))
    lines[n] = lines[n].replace("allow:", "alow:", 1)
    broken = tmp_path / "users.yaml"
    broken.write_text("".join(lines))
    r = run([adit_bin, "server", "--users", broken, "--listen", f"127.0.0.1:{H.free_port()}"], timeout=20)
    assert r.returncode == 64, (r.returncode, r.stderr)
    assert f"{broken}:{n + 1}: unknown key `alow`" in r.stderr, r.stderr


def test_the_certificate_user_of_the_example_gets_in_and_only_to_its_targets(adit, adit_bin, targets, tmp_path):
    yaml = pytest.importorskip("yaml")
    users = yaml.safe_load((EXAMPLES / "users.yaml").read_text())["users"]
    agent = next(u for u in users if "certificate" in u)
    kind, _, name = agent["certificate"].partition(":")
    assert kind == "DNS"
    echo = targets.echo()
    server_cert, server_key, _, _ = keygen(adit_bin, tmp_path, "server", "--name", "localhost", "--ip", "127.0.0.1")
    client_cert, client_key, _, _ = keygen(adit_bin, tmp_path, "agent", "--name", name)
    # The server's --allow would let the echo target through; the user's own `allow` must not.
    server = adit.server([f"127.0.0.1:{echo.port}"], extra=[
        "--users", str(EXAMPLES / "users.yaml"), "--tls-cert", str(server_cert), "--tls-key", str(server_key),
        "--tls-ca", str(client_cert)])
    local = H.free_port()
    client = adit.client(f"wss://127.0.0.1:{server.port}/", [(local, "127.0.0.1", echo.port)],
                         extra=["--ca-file", str(server_cert), "--tls-cert", str(client_cert),
                                "--tls-key", str(client_key)])
    line = server.wait_for_log("tunnel opened", timeout=15)
    assert f"user={agent['name']}" in line and "auth=certificate" in line, line
    assert H.refused_locally(local) == ("reset", b""), "the user's allow list must deny the echo target"
    client.wait_for_log("not allowed", timeout=5)


# ---------------------------------------------------------------------------
# adit.yaml: one configuration file for both ends

def localized_config(adit_bin, tmp_path, echo_port: int) -> tuple[Path, Path, dict]:
    """examples/adit.yaml with the outside world substituted (see the module's docstring); returns the file, the
    gateway's certificate and the ports chosen."""
    cert, key, _, _ = keygen(adit_bin, tmp_path, "gateway", "--name", "localhost", "--ip", "127.0.0.1")
    token, digest = make_token(adit_bin, "office")
    (tmp_path / "office.token").write_text(token + "\n")
    users = tmp_path / "users.yaml"
    users.write_text((EXAMPLES / "users.yaml").read_text() +
                     f'  - name: office\n    token: "{digest}"\n    allow: ["127.0.0.1:{echo_port}"]\n')
    ports = {"listen": H.free_port(), "admin": H.free_port(), "client-admin": H.free_port(), "local": H.free_port()}
    text = substitute((EXAMPLES / "adit.yaml").read_text(), [
        ("0.0.0.0:443", f"127.0.0.1:{ports['listen']}"),
        ("/etc/adit/cert.pem", str(cert)), ("/etc/adit/key.pem", str(key)), ("/etc/adit/users.yaml", str(users)),
        ("127.0.0.1:9090", f"127.0.0.1:{ports['admin']}"), ("127.0.0.1:9091", f"127.0.0.1:{ports['client-admin']}"),
        (SERVER_URL, f"wss://127.0.0.1:{ports['listen']}/tunnel"),
        ("/etc/adit/office.token", str(tmp_path / "office.token")),
        (f"127.0.0.1:5432:{DB}", f"127.0.0.1:{ports['local']}:127.0.0.1:{echo_port}"),
        (f"- {DB}", f"- 127.0.0.1:{echo_port}"),
    ])
    path = tmp_path / "adit.yaml"
    path.write_text(text)
    return path, cert, ports


def test_config_example_passes_check_config_and_runs_both_ends(adit, adit_bin, targets, tmp_path):
    echo = targets.echo()
    config, cert, ports = localized_config(adit_bin, tmp_path, echo.port)

    r = run([adit_bin, "check-config", "--config", config])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "adit server: valid" in r.stdout and "adit client: valid" in r.stdout, r.stdout
    assert f"{config} line " in r.stdout   # each value names its line

    server = adit._start("server", ["--config", str(config)], log_level_arg=False)
    server.wait_for_log(f"listening on wss://127.0.0.1:{ports['listen']}/tunnel", timeout=10)
    client = adit._start("client", ["--config", str(config), "--ca-file", str(cert)], log_level_arg=False)
    H.wait_tunnel_ready(ports["local"], timeout=15, proc=client)
    echo_through(ports["local"])
    # log-format: json from the file: every line the server wrote parses
    lines = [l for l in server.log_text().splitlines() if l.strip() and not l.startswith("###")]
    assert lines and all(json.loads(l)["level"] for l in lines), lines[:3]
    with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}/readyz", timeout=5) as resp:
        assert resp.status == 200
