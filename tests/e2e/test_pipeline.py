from conftest import Raw, fixture


def verdict_plugins(order):
    return f"""
[plugins.a]
path = "{fixture('fixture_verdict')}"
[plugins.a.config]
rcpt = "reject 550 5.7.1 rejected by A"

[plugins.b]
path = "{fixture('fixture_verdict')}"
[plugins.b.config]
rcpt = "tempfail 451 4.7.1 deferred by B"
""", order


def rcpt_reply(server):
    raw = Raw(server.port)
    raw.reply()
    raw.cmd(b"EHLO client.test")
    raw.cmd(b"MAIL FROM:<a@example.org>")
    reply = raw.cmd(b"RCPT TO:<bob@localhost>")
    raw.close()
    return reply


def test_order_in_toml_decides_the_verdict(sluice):
    extra, _ = verdict_plugins(None)
    code, text = rcpt_reply(sluice(rcpt='["a", "b"]', extra=extra))
    assert code == 550 and b"rejected by A" in text


def test_swapped_order_changes_the_verdict(sluice):
    extra, _ = verdict_plugins(None)
    code, text = rcpt_reply(sluice(rcpt='["b", "a"]', extra=extra))
    assert code == 451 and b"deferred by B" in text


def test_rcpt_chain_without_allow_is_closed(sluice):
    extra = f"""
[plugins.n]
path = "{fixture('fixture_verdict')}"
"""
    code, text = rcpt_reply(sluice(rcpt='["n"]', extra=extra))
    assert code == 554 and b"5.7.1" in text
