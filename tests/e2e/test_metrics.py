"""Prometheus metrics on the admin endpoint: the exposition passes
`promtool check metrics`, counts what the server did, and a real Prometheus
scrapes it over loopback."""
import json
import re
import shutil
import smtplib
import subprocess
import time
import urllib.parse
import urllib.request

from conftest import free_port
from peers import wait_for

MESSAGE = b"From: a@example.org\r\nTo: bob@example.org\r\nSubject: m\r\n\r\nhello\r\n"


def require(program):
    path = shutil.which(program)
    assert path, f"{program} is missing: run `bash tests/install-peers.sh` (as root)"
    return path


def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def value(text, series):
    """The value of one series line (`name{labels}`), or None."""
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    return None


def send_mail(server):
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as client:
        for _ in range(3):
            client.sendmail("a@example.org", ["bob@example.org"], MESSAGE)
        # Not ours and the client may not relay: refused at RCPT.
        try:
            client.sendmail("a@example.org", ["carol@elsewhere.test"], MESSAGE)
        except smtplib.SMTPRecipientsRefused:
            pass


def test_metrics_count_what_happened_and_pass_promtool(sluice):
    promtool = require("promtool")
    admin = free_port()
    server = sluice(trusted="[]", extra=f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    send_mail(server)
    delivered = 'sluice_delivery_attempts_total{result="delivered"}'

    def scraped_after_delivery():
        text = scrape(admin)
        return text if value(text, delivered) == 3 else None

    text = wait_for(scraped_after_delivery, timeout=30)
    assert text, scrape(admin)

    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr

    assert value(text, 'sluice_messages_total{outcome="accepted"}') == 3
    assert value(text, 'sluice_message_bytes_total{outcome="accepted"}') == 3 * len(MESSAGE)
    assert value(text, 'sluice_connections_total{listener="mx"}') >= 1
    assert value(text, 'sluice_connections_open{listener="mx"}') == 0
    assert value(text, 'sluice_plugin_verdicts_total{stage="rcpt",plugin="relay",verdict="allow"}') == 3
    verdicts = [line for line in text.splitlines() if line.startswith("sluice_plugin_verdicts_total{")]
    assert verdicts == [
        'sluice_plugin_verdicts_total{stage="rcpt",plugin="relay",verdict="allow"} 3',
        'sluice_plugin_verdicts_total{stage="rcpt",plugin="relay",verdict="reject"} 1',
    ], verdicts
    assert value(text, 'sluice_plugin_hook_duration_seconds_count{stage="rcpt",plugin="relay"}') == 4
    assert value(text, 'sluice_plugin_hook_duration_seconds_bucket{stage="rcpt",plugin="relay",le="+Inf"}') == 4
    assert value(text, "sluice_queue_messages") == 0
    assert value(text, "sluice_queue_oldest_age_seconds") == 0


def test_a_real_prometheus_scrapes_sluice(sluice, tmp_path):
    prometheus = require("prometheus")
    admin, web = free_port(), free_port()
    server = sluice(trusted="[]", extra=f'[admin]\naddress = "127.0.0.1:{admin}"\n')
    send_mail(server)

    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global:\n  scrape_interval: 1s\n"
        "scrape_configs:\n  - job_name: sluice\n"
        f"    static_configs:\n      - targets: ['127.0.0.1:{admin}']\n"
    )
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen(
        [prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{web}"],
        stdout=log, stderr=subprocess.STDOUT)

    def query(expr):
        url = f"http://127.0.0.1:{web}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                result = json.load(response)["data"]["result"]
        except OSError:
            return None
        return [float(r["value"][1]) for r in result]

    try:
        up = wait_for(lambda: query('up{job="sluice"}') == [1.0], timeout=60, step=0.5)
        assert up, (tmp_path / "prometheus.log").read_text()[-2000:]
        accepted = wait_for(lambda: query('sluice_messages_total{outcome="accepted"}') == [3.0], timeout=30, step=0.5)
        assert accepted, query('sluice_messages_total')
        # A histogram Prometheus can compute a quantile from.
        p99 = query('histogram_quantile(0.99, sluice_plugin_hook_duration_seconds_bucket{stage="rcpt"})')
        assert p99 and 0 < p99[0] <= 1, p99
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
