"""kill -9 under load: clients keep sending while the server is killed and
restarted on the same data dir twenty times; every message that got a 250 is
delivered to the next hop (Postfix's smtp-sink) at least once. Duplicates
are allowed (at-least-once) and reported."""
import random
import smtplib
import threading

from conftest import Server, config, free_port
from peers import wait_for

MESSAGES = 2000
CLIENTS = 8
KILLS = 20
FILLER = ("x" * 76 + "\r\n") * 26  # ~2 KiB of body


def message(msg_id):
    return (f"From: load@example.org\r\nTo: sink@example.test\r\nMessage-ID: {msg_id}\r\n"
            f"Subject: load {msg_id}\r\n\r\n{FILLER}").encode()


class Load:
    """CLIENTS smtplib sessions, each sending its share of MESSAGES over a
    reused connection; records which Message-IDs got a 250 after DATA."""

    def __init__(self, port, seed):
        self.port = port
        self.lock = threading.Lock()
        self.acked = set()
        self.attempted = 0
        self.failed = 0
        self.errors = []
        ids = [f"<load-{seed}-{n}@example.org>" for n in range(MESSAGES)]
        self.threads = [threading.Thread(target=self.client, args=(ids[i::CLIENTS],), daemon=True)
                        for i in range(CLIENTS)]

    def start(self):
        for t in self.threads:
            t.start()

    def connect(self):
        # the server may be down between a kill and its restart: retry, bounded
        last = None
        for _ in range(600):
            try:
                smtp = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
                smtp.ehlo("load.example.org")
                return smtp
            except (OSError, smtplib.SMTPException) as e:
                last = e
                threading.Event().wait(0.1)
        raise AssertionError(f"could not reconnect: {last!r}")

    def client(self, ids):
        smtp = None
        try:
            for msg_id in ids:
                with self.lock:
                    self.attempted += 1
                try:
                    if smtp is None:
                        smtp = self.connect()
                    smtp.sendmail("load@example.org", ["sink@example.test"], message(msg_id))
                except (OSError, smtplib.SMTPException):
                    # killed mid-transaction: no 250, the message may or may
                    # not arrive; carry on with a new connection
                    with self.lock:
                        self.failed += 1
                    if smtp is not None:
                        try:
                            smtp.close()
                        except OSError:
                            pass
                    smtp = None
                    continue
                with self.lock:
                    self.acked.add(msg_id)
            if smtp is not None:
                smtp.quit()
        except Exception as e:  # reported by the test, not lost in a thread
            self.errors.append(repr(e))

    def done(self):
        return not any(t.is_alive() for t in self.threads)


def test_kill_9_under_load_loses_no_acknowledged_message(tmp_path, smtp_sink_proc):
    sink = smtp_sink_proc()
    port = free_port()
    text = config(port, tmp_path / "data",
                  extra=f'[[delivery.route]]\ndomain = "example.test"\nnext_hop = "127.0.0.1:{sink.port}"\n')
    server = Server(tmp_path, text).start(port)
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    load = Load(port, seed)
    # kill at random points of the sending, spread over the whole run
    kill_points = sorted(rng.sample(range(MESSAGES // 20, MESSAGES - MESSAGES // 20), KILLS))
    kills = 0
    try:
        load.start()
        for point in kill_points:
            wait_for(lambda: load.attempted >= point or load.done(), timeout=300)
            threading.Event().wait(rng.uniform(0, 0.05))
            server.kill9()
            kills += 1
            server.start(port)
        assert wait_for(load.done, timeout=600), "clients did not finish"
        assert not load.errors, load.errors
        acked = set(load.acked)
        wait_for(lambda: acked <= set(sink.message_ids()), timeout=300, step=0.5)
    finally:
        server.stop()
    delivered = sink.message_ids()
    unique = set(delivered)
    lost = acked - unique
    duplicates = len(delivered) - len(unique)
    print(f"\ncrash-load seed={seed} kills={kills} attempted={load.attempted} "
          f"acknowledged={len(acked)} failed-mid-transaction={load.failed} "
          f"delivered={len(delivered)} unique-delivered={len(unique)} duplicates={duplicates} "
          f"delivered-unacknowledged={len(unique - acked)} lost={len(lost)}")
    assert kills == KILLS
    assert not lost, f"{len(lost)} acknowledged messages never delivered, e.g. {sorted(lost)[:5]}"
    # nothing arrives that no client sent
    assert unique <= {f"<load-{seed}-{n}@example.org>" for n in range(MESSAGES)}
    assert len(acked) > MESSAGES // 2
