"""`sluice --version` names sluice's version and the wasmtime that runs the
plugins (taken from Cargo.lock at build time)."""
import re
import subprocess
from pathlib import Path

from conftest import BIN

ROOT = Path(__file__).resolve().parents[2]


def locked_wasmtime():
    lock = (ROOT / "Cargo.lock").read_text()
    return re.search(r'name = "wasmtime"\nversion = "([^"]+)"', lock).group(1)


def test_version_names_wasmtime():
    out = subprocess.run([BIN, "--version"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert re.fullmatch(r"sluice \d+\.\d+\.\d+ \(wasmtime (\S+)\)\n", out.stdout), out.stdout
    assert f"(wasmtime {locked_wasmtime()})" in out.stdout
