"""Reasons told to a person in a mail ("unknown command #asign", "did you mean #assign?").

A reason is made in Python, in English, where the decision is taken: that wording goes to the
trace, the log and the stored refusal, and into English mail. It also carries a code and its
values, so that a template in another language words it itself: templates/<language>/reasons.txt
has one macro, `say(reason)`, with a branch per code. A code that file does not know (a site's
own language, a reason newer than its templates) reads in English, as it came.

A Reason is a str, so everything that compares, joins or logs reasons keeps working.
"""

from __future__ import annotations


class Reason(str):
    code: str
    values: dict[str, object]

    def __new__(cls, code: str, english: str, **values: object) -> Reason:
        reason = super().__new__(cls, english)
        reason.code, reason.values = code, values
        return reason
