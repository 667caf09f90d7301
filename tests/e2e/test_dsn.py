"""The DSN extension (RFC 3461) end to end through the real binary: the
parameters a client or a real Postfix sends with MAIL and RCPT decide which
delivery status notifications (RFC 3464) sluice sends, and what is in them;
they are passed on to a next hop that offers DSN (a real Postfix), and
replaced by a "relayed" report for one that does not (aiosmtpd); they
survive a restart. Every report is parsed with Python's email package."""
import email
import email.policy
import json
import smtplib

from conftest import Recorder, Server, Sink, config, free_port, queue
from peers import wait_for

SENDER = "alice@example.org"
ENVID = "QQ314159+env"
ENVID_XTEXT = "QQ314159+2Benv"
MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: bob@example.net\r\n"
           b"Subject: the DSN test\r\nMessage-ID: <dsn-test@example.org>\r\n\r\n"
           b"the secret body line\r\n")


def wait(condition, timeout=30):
    value = wait_for(condition, timeout)
    assert value, "timed out"
    return value


def route(domain, port):
    return f'[[delivery.route]]\ndomain = "{domain}"\nnext_hop = "127.0.0.1:{port}"\n'


def start(tmp_path, extra="", port=None):
    port = port or free_port()
    return Server(tmp_path, config(port, tmp_path / "data", extra=extra)).start(port)


def send(port, recipients, mail_options=(), message=MESSAGE, sender=SENDER):
    """recipients: [(address, [RCPT parameters])], sent with smtplib."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.test")
        assert s.has_extn("dsn")
        code, text = s.mail(sender, list(mail_options))
        assert code == 250, text
        for address, options in recipients:
            code, text = s.rcpt(address, list(options))
            assert code == 250, (address, text)
        code, text = s.data(message)
        assert code == 250, text


class OptionsRecorder(Recorder):
    """Keeps each RCPT's parameters, which aiosmtpd leaves to the handler."""

    def __init__(self, rcpt_replies=None):
        super().__init__(rcpt_replies)
        self.rcpt_options = []

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.rcpt_options.append(list(rcpt_options))
        return await super().handle_RCPT(server, session, envelope, address, rcpt_options)


def notifications(server):
    """How many DSNs sluice queued so far."""
    return server.log.read_text().count("delivery status notification queued")


class Report:
    """One multipart/report from a Maildir file, parsed."""

    def __init__(self, path):
        self.raw = path.read_bytes()
        self.msg = email.message_from_bytes(self.raw, policy=email.policy.compat32)
        assert self.msg.get_content_type() == "multipart/report", self.raw[:500]
        assert self.msg.get_param("report-type") == "delivery-status"
        parts = self.msg.get_payload()
        self.human, status, *rest = parts
        self.returned = rest[0] if rest else None
        assert status.get_content_type() == "message/delivery-status"
        # The email package reads the status part as blocks of fields: the
        # per-message block, then one per recipient (RFC 3464 §2.1).
        blocks = status.get_payload()
        self.per_message, self.recipients = blocks[0], blocks[1:]

    def only(self, final, action, status, original=None):
        """The one recipient block, checked against what it must say."""
        [rcpt] = self.recipients
        assert rcpt["Final-Recipient"] == f"rfc822; {final}", rcpt
        assert rcpt["Original-Recipient"] == (original and f"rfc822; {original}"), rcpt
        assert (rcpt["Action"], rcpt["Status"]) == (action, status), rcpt
        assert self.per_message["Original-Envelope-Id"] == ENVID
        return rcpt

    def by_final(self):
        return {r["Final-Recipient"].split(";", 1)[1].strip(): r for r in self.recipients}


def queue_show(server):
    """`sluice queue show` of the only queued message."""
    listed = queue(server, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)["entries"]
    shown = queue(server, "show", entry["id"])
    assert shown.returncode == 0, shown.stderr
    return shown.stdout


def reports(server, local="alice", domain="example.org"):
    return [Report(p) for p in server.maildir(local, domain)]


def test_notify_never_gets_no_bounce_and_the_default_one_quotes_envid_and_orcpt(tmp_path):
    hop = Sink(free_port(), rcpt_replies={
        "never@example.net": "550 5.1.1 no such user",
        "default@example.net": "550 5.1.1 no such user",
        "failure@example.net": "550 5.1.1 no such user",
    }).start()
    server = start(tmp_path, extra=route("example.net", hop.port))
    try:
        send(server.port, [
            ("never@example.net", ["NOTIFY=NEVER"]),
            ("default@example.net", ["ORCPT=rfc822;Default+2Blist@example.net"]),
            ("failure@example.net", ["NOTIFY=FAILURE"]),
        ], mail_options=["RET=HDRS", f"ENVID={ENVID_XTEXT}"])
        [report] = wait(lambda: reports(server), 60)
        # One report for the two that asked for it, none for NOTIFY=NEVER.
        assert notifications(server) == 1
        assert report.msg["From"].startswith("Mail Delivery System")
        assert report.per_message["Original-Envelope-Id"] == ENVID
        assert report.per_message["Reporting-MTA"] == "dns; mx.example.test"
        finals = report.by_final()
        assert sorted(finals) == ["default@example.net", "failure@example.net"], finals
        default = finals["default@example.net"]
        assert default["Original-Recipient"] == "rfc822; Default+list@example.net"
        assert default["Action"] == "failed" and default["Status"] == "5.1.1"
        assert "550 5.1.1" in default["Diagnostic-Code"]
        assert finals["failure@example.net"]["Original-Recipient"] is None
        # RET=HDRS: the headers come back, the body does not.
        assert report.returned.get_content_type() == "text/rfc822-headers"
        assert b"Subject: the DSN test" in report.raw
        assert b"the secret body line" not in report.raw
        assert b"never@example.net" not in report.raw
    finally:
        server.stop()
        hop.stop()


def test_ret_full_returns_the_whole_message(tmp_path):
    hop = Sink(free_port(), rcpt_replies={"bob@example.net": "550 5.1.1 no such user"}).start()
    server = start(tmp_path, extra=route("example.net", hop.port))
    try:
        send(server.port, [("bob@example.net", [])], mail_options=["RET=FULL"])
        [report] = wait(lambda: reports(server), 60)
        assert report.per_message["Original-Envelope-Id"] is None
        assert report.returned.get_content_type() == "message/rfc822"
        returned = report.returned.get_payload()[0]
        assert returned["Subject"] == "the DSN test"
        assert "the secret body line" in returned.get_payload()
        # Over 256 KiB the message is not returned, only its headers.
        large = MESSAGE.replace(b"Subject: the DSN test", b"Subject: large") + b"x" * 998 + b"\r\n"
        large += (b"y" * 998 + b"\r\n") * 300
        send(server.port, [("bob@example.net", [])], mail_options=["RET=FULL"], message=large)
        reports_now = wait(lambda: len(reports(server)) == 2 and reports(server), 60)
        [report] = [r for r in reports_now if b"Subject: large" in r.raw]
        assert report.returned.get_content_type() == "text/rfc822-headers"
        assert b"yyyy" not in report.raw and len(report.raw) < 20000
    finally:
        server.stop()
        hop.stop()


def test_success_to_a_maildir_gets_a_delivered_report(tmp_path):
    server = start(tmp_path)
    try:
        send(server.port, [
            ("bob@localhost", ["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@old.example"]),
            ("carol@localhost", []),
        ], mail_options=[f"ENVID={ENVID_XTEXT}"])
        wait(lambda: server.maildir("bob") and server.maildir("carol"))
        [report] = wait(lambda: reports(server), 30)
        assert report.msg["Subject"] == "Successful Mail Delivery Report"
        report.only("bob@localhost", "delivered", "2.0.0", original="bob@old.example")
        # Nothing of the local delivery's internals goes to the sender.
        assert b"/mail/" not in report.raw
        assert b"the secret body line" not in report.raw
    finally:
        server.stop()


def test_a_next_hop_without_dsn_gets_no_parameters_and_the_sender_a_relayed_report(tmp_path):
    hop = Sink(free_port())
    hop.recorder = OptionsRecorder()
    hop.controller.handler = hop.recorder
    hop.start()
    server = start(tmp_path, extra=route("example.net", hop.port))
    try:
        send(server.port, [("bob@example.net", ["NOTIFY=SUCCESS,FAILURE"])],
             mail_options=["RET=HDRS", f"ENVID={ENVID_XTEXT}"])
        [got] = wait(lambda: hop.messages)
        # aiosmtpd offers no DSN: it got none of the parameters.
        assert not [o for o in got.mail_options if o.upper().startswith(("RET=", "ENVID="))], got.mail_options
        assert hop.recorder.rcpt_options == [[]], hop.recorder.rcpt_options
        [report] = wait(lambda: reports(server), 30)
        rcpt = report.only("bob@example.net", "relayed", "2.0.0")
        assert rcpt["Remote-MTA"] is not None
    finally:
        server.stop()
        hop.stop()


def test_a_delay_report_goes_only_to_those_who_asked_for_it(tmp_path):
    hop = Sink(free_port(), rcpt_replies={
        "slow@example.net": "452 4.2.2 over quota",
        "quiet@example.net": "452 4.2.2 over quota",
    }).start()
    server = start(tmp_path, extra='warn_after = "1s"\n' + route("example.net", hop.port))
    try:
        send(server.port, [("slow@example.net", ["NOTIFY=DELAY,FAILURE"]),
                           ("quiet@example.net", ["NOTIFY=FAILURE"])],
             mail_options=[f"ENVID={ENVID_XTEXT}"])
        [report] = wait(lambda: reports(server), 60)
        assert report.msg["Subject"].startswith("Delayed Mail")
        report.only("slow@example.net", "delayed", "4.2.2")
        # More retries, still the one report.
        attempts = len(hop.rcpt_seen)
        assert wait_for(lambda: len(hop.rcpt_seen) >= attempts + 4)
        assert notifications(server) == 1
    finally:
        server.stop()
        hop.stop()


def test_success_over_lmtp_gets_a_delivered_report(sluice, dovecot_lmtp):
    dovecot = dovecot_lmtp()
    # The sender's domain, where the report goes.
    hop = Sink(free_port()).start()
    try:
        server = sluice(extra=f'[delivery]\nlocal = {{ lmtp = "127.0.0.1:{dovecot.port}" }}\n'
                              + route("example.test", hop.port))
        send(server.port, [("alice@example.org", ["NOTIFY=SUCCESS"]), ("bob@example.org", [])],
             sender="sender@example.test")
        assert wait_for(lambda: dovecot.messages("alice@example.org") and dovecot.messages("bob@example.org"), 60)
        [got] = hop.wait(1, timeout=60)
        assert got.rcpt_tos == ["sender@example.test"]
        report = email.message_from_bytes(got.original_content, policy=email.policy.compat32)
        status = report.get_payload()[1].get_payload()
        [rcpt] = status[1:]
        assert rcpt["Final-Recipient"] == "rfc822; alice@example.org"
        assert (rcpt["Action"], rcpt["Status"]) == ("delivered", "2.0.0")
        # Dovecot's own reply, not a local note.
        assert rcpt["Diagnostic-Code"].startswith("smtp; 250")
    finally:
        hop.stop()


def postfix_routes(mx, sluice_port, extra=""):
    """Postfix relays example.net to its own Sink (which lacks DSN) and
    example.org, the sender's domain, to sluice."""
    mx.main_extra = (f"relay_domains = example.net, example.org\n"
                     f"transport_maps = inline:{{ example.net=smtp:[127.0.0.1]:{mx.sink.port}, "
                     f"example.org=smtp:[127.0.0.1]:{sluice_port} }}\n{extra}")


def test_relayed_to_postfix_the_request_is_passed_on(tmp_path, postfix_mx):
    port = free_port()
    mx = postfix_mx(run=False, starttls=False)
    # Postfix's smtpd logs the commands it reads from a debug peer.
    postfix_routes(mx, port, "debug_peer_list = 127.0.0.1\n")
    mx.start()
    server = start(tmp_path, extra=route("example.net", mx.port), port=port)
    try:
        send(server.port, [("bob@example.net", ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@example.net"])],
             mail_options=["RET=HDRS", f"ENVID={ENVID_XTEXT}"])
        wait(lambda: mx.sink.messages)
        assert mx.wait_log(r"MAIL FROM:<alice@example\.org>.* RET=HDRS ENVID=QQ314159\+2Benv")
        assert mx.wait_log(r"RCPT TO:<bob@example\.net> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob\+2Bx@example\.net")
        # Its Sink offers no DSN, so Postfix, not sluice, reports "relayed".
        assert mx.wait_log(r"sender delivery status notification")
        [report] = wait(lambda: reports(server), 60)
        assert report.per_message["Reporting-MTA"] == "dns; mx.example.net", report.raw[:1500]
        assert report.per_message["Original-Envelope-Id"] == ENVID
        [rcpt] = report.recipients
        assert rcpt["Action"] == "relayed"
        assert rcpt["Original-Recipient"].replace(" ", "") == "rfc822;Bob+x@example.net"
        # Postfix reports from here on: sluice sent no report of its own.
        assert notifications(server) == 0
    finally:
        server.stop()


def test_postfix_sends_into_sluice_with_dsn_parameters(tmp_path, postfix_mx):
    port = free_port()
    mx = postfix_mx(run=False, starttls=False)
    postfix_routes(mx, port)
    mx.start()
    server = start(tmp_path, port=port)
    try:
        # Postfix is the sending MTA: it takes the message with the DSN
        # request and relays it, request and all, to sluice.
        send(mx.port, [("bob@example.org", ["NOTIFY=SUCCESS", "ORCPT=rfc822;robert@example.org"])],
             mail_options=["RET=HDRS", f"ENVID={ENVID_XTEXT}"], sender="carol@localhost")
        wait(lambda: server.maildir("bob", "example.org"), 60)
        [report] = wait(lambda: reports(server, "carol", "localhost"), 30)
        assert report.per_message["Reporting-MTA"] == "dns; mx.example.test"
        report.only("bob@example.org", "delivered", "2.0.0", original="robert@example.org")
    finally:
        server.stop()


def test_the_parameters_survive_a_restart_before_the_failure(tmp_path):
    hop_port = free_port()
    # Nothing listens on the next hop's port yet: the message is deferred.
    server = start(tmp_path, extra=route("example.net", hop_port))
    try:
        send(server.port, [("bob@example.net", ["NOTIFY=FAILURE", "ORCPT=rfc822;bob@old.example"]),
                           ("never@example.net", ["NOTIFY=NEVER"])],
             mail_options=["RET=FULL", f"ENVID={ENVID_XTEXT}"])
        wait(lambda: "delivery attempt" in server.log.read_text())
        shown = queue_show(server)
        for line in ("dsn ret:      FULL", "dsn envid:    QQ314159+env",
                     "    notify: FAILURE", "    orcpt: rfc822;bob@old.example", "    notify: NEVER"):
            assert line in shown.splitlines(), (line, shown)
    finally:
        server.stop()
    hop = Sink(hop_port, rcpt_replies={
        "bob@example.net": "550 5.1.1 no such user",
        "never@example.net": "550 5.1.1 no such user",
    }).start()
    server = Server(tmp_path, server.config_text).start(server.port)
    try:
        [report] = wait(lambda: reports(server), 60)
        report.only("bob@example.net", "failed", "5.1.1", original="bob@old.example")
        assert report.returned.get_content_type() == "message/rfc822"
        assert b"the secret body line" in report.raw
    finally:
        server.stop()
        hop.stop()
