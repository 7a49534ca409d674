"""Address folding: the forms of one mailbox that a robot or a forger varies, made equal.

Limits that count "the same sender" count folded addresses, so `Victim+1@Example.NET` and
`victim+2@example.net` are one mailbox (RFC 5233 subaddressing, case-insensitive domains, and
local parts that every common mail server treats case-insensitively), and limits per domain
count what follows the last '@'.
"""

from __future__ import annotations


def fold_address(address: str) -> str:
    """`address` lowercased, without a `+suffix` on its local part: the mailbox it reaches.

    A quoted or escaped local part ("bot", "b\\ot") reaches the same mailbox as the plain one,
    and an internationalised domain is one domain in either form (U-label or xn--)."""
    local, at, domain = address.strip().lower().rpartition("@")
    if not at:
        return address.strip().lower()
    if len(local) >= 2 and local[0] == local[-1] == '"':
        local = local[1:-1]
    local = local.replace("\\", "")
    base = local.partition("+")[0] or local  # "+tag@x" alone is a name, not a suffix
    return f"{base}@{_ascii_domain(domain.rstrip('.'))}"


def _ascii_domain(domain: str) -> str:
    if domain.isascii():
        return domain
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def domain_of(address: str) -> str:
    """The domain of `address`, lowercased, without a trailing dot; "" when there is none."""
    _, at, domain = address.strip().lower().rpartition("@")
    return _ascii_domain(domain.rstrip(".")) if at else ""
