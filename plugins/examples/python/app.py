"""The sluice example filter in Python (componentize-py).

Rejects a message whose Subject contains the configured word, tags every
other message with X-Filtered-By, and refuses recipients whose local part
starts with "noreply".
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import types as t

word = ""


class WitWorld(wit_world.WitWorld):
    def init(self, config: str) -> None:
        global word
        word = str(json.loads(config).get("word", "")).lower()
        if not word:
            raise Err('config needs a non-empty "word"')

    def on_connect(self, session):
        return t.Verdict_Next()

    def on_helo(self, session, helo):
        return t.Verdict_Next()

    def on_mail(self, session, reverse_path):
        return t.Verdict_Next()

    def on_rcpt(self, session, recipient):
        if recipient.local_part.lower().startswith("noreply"):
            return t.Verdict_Reject(t.Reply(550, "5.1.1", "This address accepts no mail"))
        return t.Verdict_Next()

    def on_data(self, session, message):
        if word in (message.header("Subject") or "").lower():
            return t.DataResult(t.Verdict_Reject(t.Reply(550, "5.7.1", f"Subject contains {word!r}")), [])
        tag = t.Modification_PrependHeader(t.Header("X-Filtered-By", "python-example"))
        return t.DataResult(t.Verdict_Next(), [tag])
