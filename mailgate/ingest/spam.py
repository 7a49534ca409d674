"""Spam verdicts that the receiving MTA's filter wrote into the header: SpamAssassin, rspamd and
Microsoft 365 / Exchange Online Protection.

A verdict here only ever withholds an acknowledgement (mail marked as spam is still stored), so a
sender who forges one harms only themselves; a header saying "not spam" grants nothing.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from email.message import Message

# rspamd's actions that mean "this is spam" (milter_headers' X-Rspamd-Action); "soft reject"
# is greylisting and "no action"/"greylist" are ham.
_RSPAMD_SPAM_ACTIONS = {"reject", "add header", "rewrite subject"}
# X-Forefront-Antispam-Report SFV values for spam: filtered as spam, marked as spam by a mail
# flow rule, and a blocked sender (Microsoft's "Anti-spam message headers" page).
_MICROSOFT_SPAM_VERDICTS = {"SPM", "SKS", "BLK", "SKB"}
_SPAMD_RESULT = re.compile(r"^\s*default:\s*(true|false)\b", re.I)
_SCL = re.compile(r"^\s*(-?\d+)\s*$")


def spam_verdict(message: Message, scl_threshold: int) -> str | None:
    """Which header marks `message` as spam, as "Header: value", or None."""
    for name, value in _fields(message):
        lower = name.lower()
        if _is_spam(lower, value, scl_threshold):
            return f"{name}: {_shown(value)}"
    return None


def _fields(message: Message) -> Iterable[tuple[str, str]]:
    for name, value in message.raw_items():
        yield name, " ".join(str(value).split())


def _is_spam(name: str, value: str, scl_threshold: int) -> bool:
    word = value.partition(",")[0].strip().lower()
    if name == "x-spam-flag":  # SpamAssassin: YES / NO
        return word == "yes"
    if name == "x-spam-status":  # SpamAssassin: "Yes, score=8.1 required=5.0 tests=…"
        return word == "yes"
    if name == "x-spam":  # rspamd's milter (and others): "Yes"
        return word in ("yes", "true")
    if name == "x-rspamd-action":
        return value.strip().lower() in _RSPAMD_SPAM_ACTIONS
    if name == "x-spamd-result":  # rspamd: "default: True [16.30 / 15.00]; …", True: action reject
        found = _SPAMD_RESULT.match(value)
        return bool(found) and found.group(1).lower() == "true"
    if name == "x-ms-exchange-organization-scl":  # 0-9; -1: the filter was bypassed
        found = _SCL.match(value)
        return bool(found) and int(found.group(1)) >= scl_threshold
    if name == "x-forefront-antispam-report":  # "CIP:…;CTRY:…;SCL:5;SRV:;IPV:NLI;SFV:SPM;…"
        fields = dict(_pair(item) for item in value.split(";"))
        scl = _SCL.match(fields.get("SCL", ""))
        return fields.get("SFV", "").upper() in _MICROSOFT_SPAM_VERDICTS or (
            bool(scl) and int(scl.group(1)) >= scl_threshold
        )
    return False


def _pair(item: str) -> tuple[str, str]:
    key, _, value = item.partition(":")
    return key.strip().upper(), value.strip()


def _shown(value: str) -> str:
    """Enough of a header value for the trace to say which verdict it was."""
    return value if len(value) <= 80 else value[:77] + "..."
