"""The receiving MTA's Authentication-Results (RFC 8601): did SPF, DKIM or DMARC fail?

Anyone can write an Authentication-Results field into a mail, so only fields whose authserv-id
is configured as trusted count, and only those the receiving MTA added: the ones above the
first Received field below them. Everything further down came with the mail from outside,
whatever authserv-id it claims (RFC 8601 section 5 asks the MTA to remove those, and not all
do). authres, a maintained parser, reads the fields.

A verdict of the trusted id can still be forged where the MTA writes its Received above its
Authentication-Results: a mail sent straight to our MX then carries its own field right below
the MTA's, with nothing between them. What the MTA wrote cannot be told from what the sender
wrote, but a forger's verdict contradicts it or the mail (see _contradicted, _dkim_added), and
then nothing in either proves anything.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from email.message import Message

import authres


@dataclass(frozen=True)
class Result:
    method: str  # "spf", "dkim", "dmarc"
    result: str  # "pass", "fail", "softfail", "none", …
    authserv_id: str
    header_from: str = ""  # DMARC's header.from: the From domain the MTA judged, lowercased
    header_d: str = ""  # DKIM's header.d: the domain that signed, lowercased
    header_i: str = ""  # DKIM's header.i: the signer's identity (Gmail names a signature by it alone)


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
        if str(value).split(";", 1)[0].strip().lower() in trusted_ids:
            seen_ours = True  # even if it cannot be read: the fields below it are not ours
        try:
            header = authres.AuthenticationResultsHeader.parse_value(" ".join(str(value).split()))
        except (authres.AuthResError, ValueError, IndexError):
            continue  # an unreadable field is no verdict
        authserv_id = (header.authserv_id or "").lower()
        if authserv_id not in trusted_ids:
            continue
        seen_ours = True
        results += [_result(r, authserv_id) for r in header.results]
    return results


def _result(found: authres.core.BaseAuthenticationResult, authserv_id: str) -> Result:
    def header(name: str) -> str:
        value = next((p.value for p in found.properties if (p.type, p.name) == ("header", name)), "") or ""
        return value.lower().rstrip(".")

    method, result = found.method.lower(), (found.result or "").lower()
    return Result(method, result, authserv_id, header("from"), header("d"), header("i"))


def from_verdict(message: Message, trusted_ids: Collection[str], from_domain: str) -> str | None:
    """What proves the From's domain sent this mail, e.g. "dmarc=pass header.from=example.com
    (mx.example.com)", or None. A DMARC pass for that domain, else a DKIM signature of that very
    domain (a signature of another domain proves only that domain). Any DMARC fail proves
    nothing, whatever passed beside it, and so do verdicts a forger added (_contradicted, _dkim_added)."""
    results = trusted_results(message, trusted_ids)
    if not from_domain or any(r.method == "dmarc" and r.result == "fail" for r in results):
        return None
    if _contradicted(results) or _dkim_added(message, results):
        return None
    for r in results:
        if r.method == "dmarc" and r.result == "pass" and r.header_from == from_domain:
            return f"dmarc=pass header.from={from_domain} ({r.authserv_id})"
    for r in results:
        if r.method == "dkim" and r.result == "pass" and r.header_d == from_domain:
            return f"dkim=pass header.d={from_domain} ({r.authserv_id})"
    return None


def _contradicted(results: list[Result]) -> bool:
    """Verdicts no single MTA gives one mail: two different DMARC results, or "no signature"
    beside a passing one. Where a milter puts its field below our Received, a mail sent straight
    to our MX can add a "pass" of the trusted id right below it: the MTA's own verdict then
    stands beside the forged one, and neither can be told apart, so neither proves anything."""
    dmarc = {(r.result, r.header_from) for r in results if r.method == "dmarc"}
    dkim = {r.result for r in results if r.method == "dkim"}
    return len(dmarc) > 1 or {"none", "pass"} <= dkim


def _dkim_added(message: Message, results: list[Result]) -> bool:
    """More dkim verdicts of a domain than the mail has DKIM-Signature fields of it. A DKIM
    verdict is about one signature in the mail, so a verdict no signature accounts for was
    written by someone else than the MTA: a forger who signed with his own domain (the MTA
    passed that) and wrote a pass of the domain he claims, or a second verdict on a signature
    the MTA failed. Then none of the verdicts proves anything: the MTA's and the forger's look
    alike. (A forger who also adds a signature of that domain gets a verdict from the MTA for
    it, and is caught, as long as the MTA reports every signature it checked.)

    Counted by the signer's domain: header.d, else header.i's (Gmail writes only header.i, and
    its fail of a copied signature left room for a forged pass with header.d). header.b (RFC
    6008) names the signature too, but a forger copies it off the mail, so it tells his verdict
    from the MTA's no better. A verdict naming no domain cannot be counted against one; nor is
    dkim=none, which is about no signature (Microsoft 365 names the From's domain in its
    header.d) and proves nothing."""
    signed = signing_domains(message)
    verdicts = Counter(_signer(r, signed) for r in results if r.method == "dkim" and r.result != "none")
    del verdicts[""]
    return any(count > signed[domain] for domain, count in verdicts.items())


# What RFC 6376 section 3.5 requires of a signature, none of them empty. A verifier skips a
# field that lacks one (rspamd reports nothing for it), so it accounts for no verdict.
_REQUIRED_TAGS = ("a", "b", "bh", "d", "h", "s")


def _signer(verdict: Result, signed: Collection[str]) -> str:
    """The domain whose signature a DKIM verdict is about: header.d, else the signing domain
    header.i is in (i= may name a subdomain of d=, RFC 6376 3.5), else header.i's own."""
    if verdict.header_d or not verdict.header_i:
        return verdict.header_d
    identity = verdict.header_i.rpartition("@")[2]
    within = [d for d in signed if identity == d or identity.endswith("." + d)]
    return max(within, key=len, default=identity)


def signing_domains(message: Message) -> Counter[str]:
    """How many DKIM-Signature fields of the mail name each domain in d=, lowercased. A field
    whose tag list cannot be read, that is not version 1 or lacks a required tag, or without a
    domain in d=, is no signature: the MTA could not have verified it either."""
    found: Counter[str] = Counter()
    for name, value in message.raw_items():
        if name.lower() != "dkim-signature" or (tags := dkim_tags(str(value))) is None:
            continue
        if tags.get("v") != "1" or not all(tags.get(t) for t in _REQUIRED_TAGS):
            continue
        domain = tags.get("d", "").lower().rstrip(".")
        if domain and not any(c.isspace() for c in domain):
            found[domain] += 1
    return found


_TAG_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def dkim_tags(value: str) -> dict[str, str] | None:
    """A DKIM tag list (RFC 6376 section 3.2) as {name: value}, or None when it is none: a
    tag-spec without "=" or with a bad name, or a tag named twice, which makes the whole list
    invalid (and would let one field name two domains). Names are case-sensitive. Whitespace and
    folding around names, "=" and values are no part of them; inside a value they stay (b= is
    folded). No value holds a ";", so the specs are what lies between them."""
    specs = value.split(";")
    if not specs[-1].strip():
        specs.pop()  # a ";" may end the list
    tags: dict[str, str] = {}
    for spec in specs:
        name, equals, tag_value = spec.partition("=")
        name = name.strip()
        if not equals or not _TAG_NAME.fullmatch(name) or name in tags:
            return None
        tags[name] = tag_value.strip()
    return tags


def proves_from(message: Message, trusted_ids: Collection[str], from_domain: str) -> bool:
    """The trusted MTA's DMARC passed for `from_domain`, the domain of the From we answer: that
    mail really comes from its sender's domain. Compared, because a mail with two From fields
    may have had the other one judged. A pass beside a contradicting verdict proves nothing
    here either (from_verdict says why)."""
    return (from_verdict(message, trusted_ids, from_domain) or "").startswith("dmarc=")


def authentication_failure(message: Message, trusted_ids: Collection[str], from_domain: str = "") -> str | None:
    """What failed, e.g. "dmarc=fail (mx.example.com)", or None when nothing trusted failed.

    DMARC fails on "fail". A DMARC pass proves the From's domain, so SPF or DKIM failing beside
    it does not count (a forwarder breaks SPF, a list footer breaks a signature). Without one,
    SPF fails on "fail", and DKIM when no signature passed (one valid signature is enough).
    `from_domain`: the domain of the From we would answer; only a DMARC pass for it counts.
    softfail, neutral, none and errors are not failures: they prove nothing either way.

    A failure only withholds something, so verdicts a forger added (see _dkim_added) are not
    looked for here: a pass he wrote beside the MTA's dkim=fail gains him nothing that sending
    the mail unsigned (dkim=none, no failure) would not."""
    results = trusted_results(message, trusted_ids)

    def first(method: str, result: str) -> Result | None:
        return next((r for r in results if r.method == method and r.result == result), None)

    if failed := first("dmarc", "fail"):
        return f"dmarc=fail ({failed.authserv_id})"
    if any(r.method == "dmarc" and r.result == "pass" and r.header_from == from_domain for r in results):
        return None  # a pass for another From (a second From field) proves nothing of this one
    if failed := first("spf", "fail"):
        return f"spf=fail ({failed.authserv_id})"
    if (failed := first("dkim", "fail")) and not first("dkim", "pass"):
        return f"dkim=fail ({failed.authserv_id})"
    return None
