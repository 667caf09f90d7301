"""Following one message through the logs: with `--log-format json`, the
queue id in the delivered message's Received header finds the transaction
line, which names the session, whose connect and disconnect lines are
there too, and the delivery line names the next hop."""
import json
import re
import smtplib

from conftest import BIN, Server, Sink, config, free_port


def test_queue_id_from_received_header_leads_through_the_json_log(tmp_path):
    sink_port, port = free_port(), free_port()
    sink = Sink(sink_port).start()
    text = config(port, tmp_path / "data", extra=(
        f'[[delivery.route]]\ndomain = "remote.test"\nnext_hop = "127.0.0.1:{sink_port}"\ntls = "none"\n'))
    cfg = tmp_path / "logs.toml"
    cfg.write_text(text)
    server = Server(tmp_path, text, args=["serve", "--config", str(cfg), "--log-format", "json"])
    try:
        server.start(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("client.example")
            client.sendmail("alice@example.org", ["bob@remote.test"],
                            b"Subject: follow me\r\n\r\nhello\r\n")
        [delivered] = sink.wait(1)
        # The top header is ours, folded over several lines.
        head = delivered.content.decode().split("\r\n\r\n", 1)[0]
        received = re.match(r"Received:.*?(?=\r\n\S)", head, re.S).group(0)
        queue_id = re.search(r"\bid ([0-9a-f]{16})\b", received).group(1)
        server.stop()

        lines = []
        for raw in server.log.read_text().splitlines():
            try:
                lines.append(json.loads(raw))
            except ValueError:
                raise AssertionError(f"not a JSON log line: {raw!r}")
        fields = [dict(line["fields"], level=line["level"]) for line in lines]

        [queued] = [f for f in fields if f.get("message") == "message queued"]
        assert queued["queue_id"] == queue_id
        assert queued["from"] == "alice@example.org" and queued["recipients"] == 1
        session = queued["session"]
        [connect] = [f for f in fields if f.get("message") == "connect" and f.get("session") == session]
        assert connect["listener"] == "mx"
        [disconnect] = [f for f in fields if f.get("message") == "disconnect" and f.get("session") == session]
        assert disconnect["queued"] == 1 and disconnect["helo"] == "client.example"
        [attempt] = [f for f in fields if f.get("message") == "delivery attempt" and f.get("queue_id") == queue_id]
        assert attempt["recipient"] == "bob@remote.test"
        assert attempt["host"] == "127.0.0.1", attempt
    finally:
        server.stop()
        sink.stop()
