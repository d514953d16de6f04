"""Job and worker ids: UUIDv7 strings (time-ordered, so index inserts stay local and ids break
FIFO ties)."""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = ["canonical_uuid", "id_stream", "is_uuid", "new_id", "new_ids"]

_CANONICAL = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_lock = threading.Lock()
_last_ms = 0
_counter = 0
_entropy = b""  # the OS's randomness, read 4 KiB at a time (a read costs more than an id)
_used = 0


def _forget_entropy() -> None:
    """A forked child must not hand out the ids its parent's leftover randomness would make."""
    global _entropy, _used
    _entropy, _used = b"", 0


os.register_at_fork(after_in_child=_forget_entropy)


def _random_bytes(count: int) -> bytes:
    """``count`` bytes of the OS's randomness (call with ``_lock`` held)."""
    global _entropy, _used
    if _used + count > len(_entropy):
        _entropy, _used = os.urandom(max(4096, count)), 0
    chunk = _entropy[_used:_used + count]
    _used += count
    return chunk


def new_id() -> str:
    """A new UUIDv7 (RFC 9562) as a string; monotonic within this process."""
    return new_ids(1)[0]


def new_ids(count: int) -> list[str]:
    """``count`` new UUIDv7 strings, each greater than the one before (one lock, one read of the
    clock and one hex conversion of the randomness for the lot: bulk enqueue makes thousands)."""
    global _last_ms, _counter
    ids = []
    with _lock:
        ms = time.time_ns() // 1_000_000
        tails = _random_bytes(8 * count).hex()  # 16 hex digits of each id's random bits
        stamp, stamp_ms = "", -1
        for start in range(0, 16 * count, 16):
            if ms > _last_ms:
                _last_ms = ms
                _counter = int.from_bytes(_random_bytes(2)) & 0x7FF
            else:
                # Same millisecond (or the clock stepped back): keep order with a 12-bit counter,
                # borrowing the next millisecond when it overflows.
                _counter += 1
                if _counter > 0xFFF:
                    _last_ms += 1
                    _counter = 0
            if _last_ms != stamp_ms:
                hex_ms = f"{_last_ms:012x}"
                stamp, stamp_ms = f"{hex_ms[:8]}-{hex_ms[8:]}-7", _last_ms
            # 48 bits of milliseconds, version 7, the counter, variant 0b10, 62 random bits.
            ids.append(f"{stamp}{_counter:03x}-{_VARIANT[tails[start]]}{tails[start + 1:start + 4]}"
                       f"-{tails[start + 4:start + 16]}")
    return ids


def id_stream(count: int) -> Iterator[str]:
    """``count`` new ids as :func:`new_ids` makes them, in pieces of 32 growing to 256: a stream
    of rows built from them starts at once, yet each lock and read of the clock serves many."""
    made, piece = 0, 32
    while made < count:
        yield from new_ids(min(piece, count - made))
        made, piece = made + piece, min(2 * piece, 256)


#: A random hex digit to the variant's: 0b10 and the digit's two low (random) bits.
_VARIANT = {f"{n:x}": f"{0b1000 | (n & 0b11):x}" for n in range(16)}


def is_uuid(value: object) -> bool:
    """True when ``value`` is a string holding a UUID (any version)."""
    if not isinstance(value, str) or len(value) != 36:
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def canonical_uuid(value: object) -> str | None:
    """``value`` as a lower-case hyphenated UUID string, or None when it holds no UUID. Ids Soniq
    made itself are already canonical and pass without building a ``uuid.UUID``."""
    if not isinstance(value, str):
        return None
    if _CANONICAL.fullmatch(value):
        return value
    return str(uuid.UUID(value)) if is_uuid(value) else None
