"""What ships in config/: the production and inbound examples pass
check-config (config/inbound.toml is also started and probed by
test_open_relay_nmap.py), and
the systemd unit passes `systemd-analyze verify` (with the binary path
pointed at the one under test)."""
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN

CONFIG = Path(__file__).resolve().parents[2] / "config"


@pytest.mark.parametrize("name", ["production.toml", "inbound.toml"])
def test_shipped_examples_are_valid_configurations(name):
    out = subprocess.run([BIN, "check-config", str(CONFIG / name)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (Debian package systemd)"
    unit = (CONFIG / "sluice.service").read_text().replace("/usr/local/bin/sluice", str(Path(BIN).resolve()))
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit
    assert "MemoryDenyWriteExecute=yes" not in unit  # wasmtime JIT-compiles plugins
    path = tmp_path / "sluice.service"
    path.write_text(unit)
    out = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    # verify warns (without failing) about unknown keys and bad values
    assert "Unknown" not in out.stderr and "Failed to parse" not in out.stderr, out.stderr
