"""The binary every other test runs (`make build`: release, `--static-swift-stdlib`) is the one that ships, and it
runs where no Swift toolchain is installed: it links no Swift library, and in a mount namespace where /opt/swift
is an empty directory it still moves and verifies data (`adit demo`), while the debug build of the unit tests
(linked dynamically), as the control, cannot even start there."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

import e2e_helpers as H

REPO = Path(__file__).resolve().parents[2]
SWIFT_ROOT = Path("/opt/swift")


@pytest.fixture(scope="module")
def static_bin(adit_bin) -> Path:
    return adit_bin


@pytest.fixture(scope="module")
def dynamic_bin() -> Path:
    p = Path(os.environ.get("ADIT_DYNAMIC_BIN", REPO / ".build/debug/adit"))
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.skip(f"no dynamically linked control at {p}: `swift build` makes it (make test does)")
    return p


def without_swift(argv: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Runs argv in a private mount namespace where the toolchain's directory is hidden under an empty tmpfs."""
    if os.geteuid() != 0 or not shutil.which("unshare"):
        pytest.skip("hiding /opt/swift needs root and unshare (CI has both)")
    if not SWIFT_ROOT.is_dir():
        pytest.skip("no /opt/swift here: nothing to hide")
    script = f'mount -t tmpfs none {SWIFT_ROOT} && exec "$@"'
    return subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh", *argv],
                          capture_output=True, text=True, timeout=H.scaled(timeout),
                          env={k: v for k, v in H._child_env().items() if k != "LD_LIBRARY_PATH"})


def test_the_static_binary_links_no_swift_library(static_bin):
    out = subprocess.run(["ldd", str(static_bin)], capture_output=True, text=True, timeout=H.scaled(10))
    assert out.returncode == 0, out.stderr
    libraries = [ln.split()[0] for ln in out.stdout.splitlines() if ln.strip()]
    swift = [lib for lib in libraries if "swift" in lib.lower() or "Foundation" in lib or "dispatch" in lib]
    assert not swift, f"still linked dynamically: {swift}"
    assert any(lib.startswith("libz.so") for lib in libraries), libraries


@pytest.mark.deadline(120)
def test_the_static_binary_moves_data_with_no_swift_libraries(static_bin, dynamic_bin):
    control = without_swift([str(dynamic_bin), "--version"], timeout=10)
    assert control.returncode != 0 and "error while loading shared libraries: libswift" in control.stderr, \
        f"the namespace did not hide the toolchain (the ordinary build started): {control.stdout}{control.stderr}"
    version = without_swift([str(static_bin), "--version"], timeout=10)
    assert version.returncode == 0 and version.stdout.strip(), version.stderr
    demo = without_swift([str(static_bin), "demo", "--streams", "2", "--megabytes", "16"], timeout=90)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "verified" in (demo.stdout + demo.stderr).lower(), demo.stdout + demo.stderr
