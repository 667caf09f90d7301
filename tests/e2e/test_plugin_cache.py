"""The compiled-component cache across restarts of the real server: a
second start loads what the first compiled, the directory is private, and a
corrupt entry is compiled again instead of failing the start."""
import stat
import urllib.request

from conftest import Server, config, fixture, free_port


def loads(admin):
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith('sluice_plugin_loads_total{plugin="v",'):
            cache = line.split('cache="', 1)[1].split('"', 1)[0]
            out[cache] = int(float(line.rsplit(" ", 1)[1]))
    return out


def start(tmp_path, extra_cache=""):
    port, admin = free_port(), free_port()
    extra = f"""
[admin]
address = "127.0.0.1:{admin}"
{extra_cache}
[plugins.v]
path = "{fixture('fixture_verdict')}"
"""
    server = Server(tmp_path, config(port, tmp_path / "data", pipeline_extra='mail = ["v"]', extra=extra))
    server.start(port)
    return server, admin


def test_second_start_loads_from_the_cache(tmp_path):
    server, admin = start(tmp_path)
    assert loads(admin) == {"stored": 1}
    assert server.stop() == 0
    cache = tmp_path / "data" / "cache"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    entries = sorted(cache.glob("*.cwasm"))
    assert len(entries) == 2  # the fixture and builtin:relay

    server, admin = start(tmp_path)
    assert loads(admin) == {"hit": 1}
    assert server.stop() == 0

    for entry in entries:
        entry.write_bytes(b"corrupt")
    server, admin = start(tmp_path)
    assert loads(admin) == {"stored": 1}
    assert "cache entry does not load, compiling again" in server.log.read_text()
    assert server.stop() == 0


def test_cache_can_be_turned_off_or_moved(tmp_path):
    server, admin = start(tmp_path, "[plugin_cache]\nenabled = false\n")
    assert loads(admin) == {"compiled": 1}
    server.stop()
    elsewhere = tmp_path / "elsewhere"
    server, admin = start(tmp_path, f'[plugin_cache]\ndir = "{elsewhere}"\n')
    assert loads(admin) == {"stored": 1}
    server.stop()
    assert len(list(elsewhere.glob("*.cwasm"))) == 2
