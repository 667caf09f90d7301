import smtplib

from conftest import strip_trace

MESSAGE = (b"From: alice@example.org\r\nTo: bob@localhost\r\nSubject: exact bytes\r\n"
           b"\r\nline one\r\n.leading dot\r\n\r\ntrailing line \xc3\xa9\r\n")


def test_message_arrives_in_maildir_byte_exact(sluice):
    server = sluice()
    with smtplib.SMTP("127.0.0.1", server.port, timeout=10) as smtp:
        code, caps = smtp.ehlo("client.test")
        assert code == 250
        for ext in (b"PIPELINING", b"8BITMIME", b"SIZE", b"ENHANCEDSTATUSCODES", b"SMTPUTF8"):
            assert ext in caps
        assert b"AUTH" not in caps
        assert smtp.sendmail("alice@example.org", ["bob@localhost", "carol@example.org"], MESSAGE,
                             mail_options=["BODY=8BITMIME"]) == {}
    for local, domain in (("bob", "localhost"), ("carol", "example.org")):
        files = _wait(lambda: server.maildir(local, domain))
        assert len(files) == 1
        data = files[0].read_bytes()
        assert data.startswith(b"Return-Path: <alice@example.org>\r\nReceived: from client.test")
        assert strip_trace(data) == MESSAGE


def _wait(fn, timeout=15):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        result = fn()
        if result:
            return result
        time.sleep(0.1)
    return fn()
