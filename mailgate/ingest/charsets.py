"""Bytes from mail -> text, when the declared charset is missing, wrong or unknown.

The order follows what real mail does (and what the WHATWG Encoding Standard does for labels):
- a label names the superset its senders really use: `gb2312` mail carries GBK bytes,
  `ks_c_5601` is Windows-949, `iso-8859-1` is Windows-1252;
- bytes that are valid UTF-8 are UTF-8 unless a multibyte label decodes them cleanly: a
  single-byte label (which decodes anything) proves nothing, while Latin-1 or Cyrillic text
  that happens to be valid UTF-8 hardly exists;
- a label that is missing, unknown, `us-ascii` over 8-bit bytes, or that does not decode the
  bytes, leaves the choice to a detector (chardet), whose guesses are checked for plausibility.
"""

from __future__ import annotations

import codecs
import re
import unicodedata
from email.message import Message

# Labels whose bytes are, in practice, a larger charset's (WHATWG Encoding Standard, plus the
# Korean and Japanese Windows code pages that standard's decoders are).
_SUPERSETS = {
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "cp936": "gb18030",
    "big5": "big5hkscs",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
    "iso8859_1": "cp1252",
    "iso8859_9": "cp1254",
    "iso8859_11": "cp874",
    "tis_620": "cp874",
    "iso2022_jp": "iso2022_jp_ext",
    "utf_8_sig": "utf_8",
}
# Labels Python does not know but mail uses.
_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "iso-8859-8-i": "iso8859_8",
    "unicode-1-1-utf-8": "utf_8",
    "utf8mb4": "utf_8",
    "x-unicode20utf8": "utf_8",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "x-gbk": "gb18030",
    "x-euc-jp": "euc_jp",
    "x-mac-roman": "mac_roman",
    "x-user-defined": "cp1252",
    "windows-874": "cp874",
}
# Charsets that cannot decode just any bytes: a clean decode with one of them is evidence.
_MULTIBYTE = frozenset(
    {"utf_8", "gb18030", "big5hkscs", "cp949", "cp932", "euc_jp", "euc_jis_2004", "euc_jisx0213", "johab"}
)
# Codecs whose bytes are 7-bit or not ASCII-based at all: only the label can tell.
_NOT_8BIT = re.compile(r"^(utf_7|utf_16.*|utf_32.*|iso2022_.*|hz)$")
_ISO2022_ESCAPE = re.compile(rb"\x1b[$(][@A-Z]")
_STRAY_BYTE = re.compile(r"[\udc80-\udcff]")
# What a mail charset decodes to when it is not the right one: box drawing (KOI8, DOS code
# pages), C1 controls, private use.
_IMPLAUSIBLE = re.compile(r"[\u0080-\u009f\u2500-\u259f\ue000-\uf8ff\ufffd]")
# Alphabets that never meet inside one word ("Rйunion" is French read as Windows-1251).
_ALPHABETS = frozenset({"LATIN", "CYRILLIC", "GREEK", "HEBREW", "ARABIC", "THAI", "ARMENIAN", "GEORGIAN"})
# The detector and the plausibility check look at this much: enough to decide, bounded in time.
SAMPLE = 64 * 1024


def codec_for(label: str | None) -> str | None:
    """The Python codec to read bytes labelled `label` with, or None for no or an unknown label."""
    if not label:
        return None
    name = label.strip().strip("\"'").lower().partition("*")[0]  # "utf-8*en": RFC 2231 language
    name = _ALIASES.get(name, name)
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return None
    if not getattr(info, "_is_text_encoding", True):
        return None  # zlib, base64, rot13 …: codecs, but not of bytes to text
    codec = info.name.replace("-", "_")
    return _SUPERSETS.get(codec, codec)


def decode_bytes(data: bytes, label: str | None = None) -> str:
    """`data` as text: read with `label` (a MIME charset) where it is right, repaired where not."""
    if not data:
        return ""
    codec = codec_for(label)
    if codec and _NOT_8BIT.match(codec) and (text := _strict(data, codec)) is not None:
        return text
    if data.isascii():
        if _ISO2022_ESCAPE.search(data) and (text := _strict(data, "iso2022_jp_ext")) is not None:
            return text  # undeclared ISO-2022-JP, as old Japanese clients send it
        return data.decode("ascii")
    if codec in _MULTIBYTE and (text := _strict(data, codec)) is not None:
        return text
    if (text := _strict(data, "utf_8")) is not None:
        return text
    # A single-byte label decodes anything, so it stands only once UTF-8 is ruled out; a
    # "us-ascii" label over 8-bit bytes fails here, as does Windows-1252 over its unused bytes.
    if codec and (text := _strict(data, codec)) is not None:
        return text
    if _mostly_utf8(data):
        # UTF-8 with a few stray bytes (a Latin-1 signature pasted in, a cut sequence).
        return _STRAY_BYTE.sub(_stray_as_cp1252, data.decode("utf-8", "surrogateescape"))
    fallback = codec if codec and codec != "ascii" else "cp1252"
    return detect(data) or data.decode(fallback, "replace")


def decode_raw_8bit(data: bytes, hint: str | None = None) -> str:
    """Undeclared 8-bit bytes in a header or a parameter: UTF-8 first (RFC 6532, and what
    clients write today), then the charset the mail declares for its text, then the detector."""
    text = _strict(data, "utf_8")
    return text if text is not None else decode_bytes(data, hint)


def declared_charset(message: Message) -> str | None:
    """The charset a mail declares for its text (its first text part's): the best guess for the
    undeclared 8-bit bytes of its headers, which clients write in the same charset."""
    for part in message.walk():
        if not part.is_multipart():
            return part.get_content_charset() if part.get_content_maintype() == "text" else None
    return None


def detect(data: bytes) -> str | None:
    """The detector's most likely reading of `data` that looks like text, or None."""
    import chardet  # imported here: only mail without a usable label pays for its models

    results = chardet.detect_all(
        data[:SAMPLE],
        ignore_threshold=True,
        encoding_era=chardet.EncodingEra.MODERN_WEB,  # what mail uses; no Mac or DOS code pages
        prefer_superset=True,
        compat_names=False,
    )
    for result in results:
        codec = codec_for(result.get("encoding"))
        if codec and codec != "utf_8" and (text := _strict(data, codec)) is not None and plausible(text[:SAMPLE]):
            return text
    return None


def plausible(text: str) -> bool:
    """Whether `text` could be what a person wrote, rather than bytes read with the wrong charset."""
    if _IMPLAUSIBLE.search(text):
        return False
    scripts: set[str] = set()
    for char in text:
        if char.isalpha() or unicodedata.category(char).startswith("M"):
            script = unicodedata.name(char, "").split(" ")[0]
            if script in _ALPHABETS:
                scripts.add(script)
                if len(scripts) > 1:
                    return False
        else:
            scripts.clear()  # a new word
    return True


def _mostly_utf8(data: bytes) -> bool:
    """Valid UTF-8 sequences outnumber the bytes that are not UTF-8 at least four to one."""
    decoded = data[:SAMPLE].decode("utf-8", "surrogateescape")
    stray = len(_STRAY_BYTE.findall(decoded))
    return sum(1 for c in decoded if ord(c) > 0x7F) - stray >= 4 * stray


def _stray_as_cp1252(match: re.Match[str]) -> str:
    return bytes([ord(match.group()) - 0xDC00]).decode("cp1252", "replace")


def _strict(data: bytes, codec: str) -> str | None:
    try:
        return data.decode(codec)
    except (UnicodeDecodeError, LookupError):
        return None
