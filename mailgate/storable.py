"""Text that every database holds the same: what comes from mail is scrubbed before it is written.

PostgreSQL refuses NUL in text and JSON and cannot encode a lone surrogate (an undecoded byte);
SQLite stores the NUL and fails on the surrogate. One mail must not be a ticket on one backend
and quarantined on the other, whichever field a NUL reaches (a Content-Type, a bounce's
diagnostic, a trace note), so every text and JSON value of a flushed row is scrubbed here.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import inspect
from sqlalchemy.orm import Session, UOWTransaction

_UNSTORABLE = re.compile(r"[\x00\ud800-\udfff]")


def storable(value: Any) -> Any:
    """`value` without NUL and with lone surrogates as U+FFFD, in strings, lists and dicts alike."""
    if isinstance(value, str):
        return _UNSTORABLE.sub(_replacement, value) if _UNSTORABLE.search(value) else value
    if isinstance(value, list):
        return [storable(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): storable(v) for k, v in value.items()}
    return value


def scrub_before_flush(session: Session, _context: UOWTransaction, _instances: object) -> None:
    """A `before_flush` listener: the new and changed rows' values, made storable in place."""
    for obj in (*session.new, *session.dirty):
        state = inspect(obj)
        columns = state.mapper.column_attrs.keys()
        for key in columns:
            if key not in state.dict:  # not loaded, so not changed
                continue
            value = state.dict[key]
            cleaned = storable(value)
            if cleaned != value:
                setattr(obj, key, cleaned)


def _replacement(match: re.Match[str]) -> str:
    return "" if match.group() == "\x00" else "\ufffd"
