import smtplib

from conftest import Server, Sink, config, free_port, strip_trace


def test_acknowledged_message_survives_kill_9(tmp_path):
    port, sink_port = free_port(), free_port()
    text = config(port, tmp_path / "data",
                  extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink_port}"\n')
    server = Server(tmp_path, text).start(port)
    body = b"Subject: durable\r\n\r\nkeep me\r\n"
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
            code, reply = smtp.data if False else (None, None)
            smtp.ehlo()
            smtp.mail("a@example.org")
            smtp.rcpt("user@example.test")
            code, reply = smtp.data(body)
            assert code == 250 and b"queued as" in reply
        server.kill9()
        server = Server(tmp_path, text).start(port)
        sink = Sink(sink_port).start()
        try:
            messages = sink.wait(1, timeout=30)
            assert len(messages) == 1
            content = messages[0].original_content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
            assert strip_trace(content) == body
        finally:
            sink.stop()
    finally:
        server.stop()


def test_sigterm_exits_cleanly(tmp_path):
    port = free_port()
    server = Server(tmp_path, config(port, tmp_path / "data")).start(port)
    assert server.stop() == 0
