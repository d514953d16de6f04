"""JSON in and out: the one place for what Soniq can store.

Payloads and results are strict JSON (RFC 8259) that PostgreSQL's ``jsonb`` accepts: no NaN or
Infinity, no NUL characters, no lone surrogates. Anything else is rejected with a
:class:`~soniq.errors.SerializationError` before it is written. As in :func:`json.dumps`, tuples
are written as lists and int/float/bool/None keys as strings. Floats are spelled so that every
backend gives back the same value: ``jsonb`` keeps a number's digits, not its spelling, so
``1e+16`` would come back from PostgreSQL as the integer ``10000000000000000`` (and ``-0.0`` as
``0.0``); such floats are written positionally (``10000000000000000.0``) and ``-0.0`` as ``0.0``.
Never pickle.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from json.encoder import c_make_encoder, encode_basestring  # type: ignore[attr-defined]
from typing import Any

from soniq.errors import SerializationError, ValidationError

__all__ = [
    "ascii_text", "canonical_json", "capped_text", "dumps", "has_unstorable_chars", "loads", "longer_than",
    "storable_text", "to_utc", "unique_key", "utc_now",
]

# A JSON-escaped NUL (\u0000) not itself escaped, and any surrogate code point left in the text.
_JSONB_UNSAFE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000|[\ud800-\udfff]")
# A JSON string (skipped whole, so nothing inside one is touched), or a float jsonb would respell:
# an exponent form (Python's repr for |x| >= 1e16, always a whole number) or negative zero.
_RESPELL = re.compile(r'"[^"\\]*+(?:\\.[^"\\]*+)*+"|(-?\d++(?:\.\d++)?+e\+\d++|-0\.0(?!\d))')
# Characters no backend can store in text: NUL (PostgreSQL) and lone surrogates (not UTF-8).
_UNSTORABLE_CHAR = re.compile("[\x00\ud800-\udfff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")


def _respell(match: re.Match[str]) -> str:
    number = match[1]
    if number is None:
        return match[0]
    if number == "-0.0":
        return "0.0"
    return f"{Decimal(number):f}.0"


def _refuse(value: object) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


# json.dumps() builds an encoder per call, most of the cost for a small payload: build the C one
# once (no circular-reference markers: a cycle ends in RecursionError, reported below).
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                            check_circular=False, default=_refuse)
_chunks = (c_make_encoder(None, _refuse, encode_basestring, None, ":", ",", False, False, False)
           if c_make_encoder is not None else _ENCODER.iterencode)


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` as compact JSON text, or raise :class:`SerializationError` naming ``what``."""
    try:
        text = "".join(_chunks(value, False))
    except (TypeError, ValueError) as exc:
        raise SerializationError(
            f"{what} is not JSON-serialisable: {exc}. Soniq stores payloads as JSON "
            "(str, int, float, bool, None, list, dict with str keys); convert other values first."
        ) from exc
    except RecursionError as exc:
        raise SerializationError(f"{what} is nested too deeply to store as JSON") from exc
    if (not text.isascii() or "\\u0000" in text) and _JSONB_UNSAFE.search(text):
        raise SerializationError(
            f"{what} contains a NUL character or a lone surrogate, which JSON storage cannot hold"
        )
    if "e+" in text or "-0.0" in text:  # rare: skip the scan for everything else
        text = _RESPELL.sub(_respell, text)
    return text


def has_unstorable_chars(text: str) -> bool:
    """True when ``text`` holds a NUL or a lone surrogate, which no backend can store."""
    return _UNSTORABLE_CHAR.search(text) is not None


def storable_text(text: str) -> str:
    """``text`` with each NUL or lone surrogate written as a ``\\uXXXX`` escape, for messages
    (exception text, tracebacks) that must be stored whatever they contain."""
    if _UNSTORABLE_CHAR.search(text) is None:
        return text
    return _UNSTORABLE_CHAR.sub(lambda match: f"\\u{ord(match[0]):04x}", text)


def ascii_text(text: str) -> str:
    """``text`` with each non-ASCII character written as a ``\\uXXXX`` (``\\UXXXXXXXX``) escape,
    for messages a database whose encoding is not UTF-8 must store whatever they contain."""
    if text.isascii():
        return text
    return _NON_ASCII.sub(lambda match: f"\\u{ord(match[0]):04x}" if ord(match[0]) < 0x10000
                          else f"\\U{ord(match[0]):08x}", text)


def longer_than(text: str, limit: int) -> bool:
    """True when ``text`` takes more than ``limit`` bytes as UTF-8; O(1) unless ``text`` holds
    non-ASCII characters and is within a factor of 4 of the limit."""
    size = len(text)
    if size > limit:
        return True
    if size * 4 <= limit or text.isascii():  # isascii() is O(1) on CPython's str
        return False
    return len(text.encode("utf-8", "surrogatepass")) > limit


def capped_text(text: str, limit: int) -> str:
    """``text``, or its start and end with the middle cut so that it takes at most ``limit``
    bytes as UTF-8 (``limit`` of 256 or more)."""
    if not longer_than(text, limit):
        return text
    data = text.encode("utf-8", "surrogatepass")
    keep = (limit - 64) // 2  # 64 bytes left for the marker
    marker = f" [... {len(data) - 2 * keep} bytes cut ...] "
    head = data[:keep].decode("utf-8", "ignore")
    tail = data[len(data) - keep:].decode("utf-8", "ignore")
    return head + marker + tail


def loads(text: str | bytes | None) -> Any:
    """Decode JSON text (None stays None)."""
    if text is None:
        return None
    return json.loads(text)


def canonical_json(value: Any) -> str:
    """``value`` as canonical JSON text (sorted keys, no spaces): equal values, equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def unique_key(job_name: str, args_json: str) -> str:
    """The dedup key of a ``unique=True`` job: its name and a hash of its canonical arguments."""
    canonical = json.dumps(json.loads(args_json), sort_keys=True, separators=(",", ":"))
    return f"unique:{job_name}:{hashlib.sha256(canonical.encode()).hexdigest()}"


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_utc(when: datetime | timedelta | float | int | None, *, now: datetime | None = None,
           what: str = "scheduled_at") -> datetime | None:
    """Normalise a run time: an aware datetime, a timedelta from now, or seconds from now.

    Naive datetimes are refused: their zone is a guess Soniq will not make.
    """
    if when is None:
        return None
    if isinstance(when, bool):
        raise ValidationError(f"{what} must be a datetime, timedelta or number of seconds, not bool")
    if isinstance(when, datetime):
        if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
            raise ValidationError(
                f"{what} is a naive datetime ({when.isoformat()}); pass a timezone-aware one, "
                "e.g. datetime.now(UTC) + timedelta(minutes=5)"
            )
        return when.astimezone(UTC)
    base = now or utc_now()
    if isinstance(when, int | float) and (when != when or when in (float("inf"), float("-inf"))):
        raise ValidationError(f"{what} must be a finite number of seconds, got {when!r}")
    if isinstance(when, timedelta | int | float):
        try:
            return base + (when if isinstance(when, timedelta) else timedelta(seconds=when))
        except OverflowError:
            raise ValidationError(f"{what} is out of the range of dates: {when!r}") from None
    raise ValidationError(
        f"{what} must be a datetime, timedelta or number of seconds, not {type(when).__name__}"
    )
