"""The receiving MTA's Authentication-Results (RFC 8601): did SPF, DKIM or DMARC fail?

Anyone can write an Authentication-Results field into a mail, so only fields whose authserv-id
is configured as trusted count, and only those the receiving MTA added: the ones above the
first Received field below them. Everything further down came with the mail from outside,
whatever authserv-id it claims (RFC 8601 section 5 asks the MTA to remove those, and not all
do). authres, a maintained parser, reads the fields.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from email.message import Message

import authres


@dataclass(frozen=True)
class Result:
    method: str  # "spf", "dkim", "dmarc"
    result: str  # "pass", "fail", "softfail", "none", …
    authserv_id: str


def trusted_results(message: Message, trusted_ids: Collection[str]) -> list[Result]:
    """The results of the trusted receiving MTA, from the top of the header down to the first
    Received field below its first Authentication-Results field."""
    if not trusted_ids:
        return []
    results: list[Result] = []
    seen_ours = False
    for name, value in message.raw_items():
        lower = name.lower()
        if lower == "received" and seen_ours:
            break  # the hops before ours: what they carry came with the mail
        if lower != "authentication-results":
            continue
        try:
            header = authres.AuthenticationResultsHeader.parse_value(" ".join(str(value).split()))
        except (authres.AuthResError, ValueError, IndexError):
            continue  # an unreadable field is no verdict
        authserv_id = (header.authserv_id or "").lower()
        if authserv_id not in trusted_ids:
            continue
        seen_ours = True
        results += [Result(r.method.lower(), (r.result or "").lower(), authserv_id) for r in header.results]
    return results


def authentication_failure(message: Message, trusted_ids: Collection[str]) -> str | None:
    """What failed, e.g. "dmarc=fail (mx.example.com)", or None when nothing trusted failed.

    SPF and DMARC fail on any "fail"; DKIM only when no signature passed (a mail may carry
    several, and one valid signature is enough). softfail, neutral, none and errors are not
    failures: they prove nothing either way."""
    results = trusted_results(message, trusted_ids)
    dkim_passed = any(r.method == "dkim" and r.result == "pass" for r in results)
    for method in ("dmarc", "spf", "dkim"):
        if method == "dkim" and dkim_passed:
            continue
        failed = next((r for r in results if r.method == method and r.result == "fail"), None)
        if failed is not None:
            return f"{method}=fail ({failed.authserv_id})"
    return None
