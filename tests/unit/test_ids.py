"""Job ids: UUIDv7 strings, strictly increasing within a process, also across a counter overflow."""

from __future__ import annotations

import os
import uuid

from soniq.ids import canonical_uuid, id_stream, is_uuid, new_id, new_ids


def test_ids_are_increasing_uuid7_strings_across_counter_overflow() -> None:
    # 20 000 ids in one call land in far fewer milliseconds than that: the 12-bit counter
    # overflows (more than 4 096 per millisecond) and must borrow the next millisecond.
    ids = new_ids(20_000) + [new_id() for _ in range(100)] + new_ids(3)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_new_ids_of_zero_is_empty() -> None:
    assert new_ids(0) == []
    assert list(id_stream(0)) == []


def test_id_stream_makes_exactly_count_increasing_ids_a_piece_at_a_time() -> None:
    stream = id_stream(1_000)
    first = next(stream)
    between = new_id()  # made after the first piece, before the rest: they sort after it
    rest = list(stream)
    assert len(rest) == 999 and len(set(rest)) == 999
    assert first < rest[0] < rest[-1] and rest == sorted(rest)
    assert rest[30] < between < rest[31]  # the first piece held 32 ids


def test_is_uuid() -> None:
    assert is_uuid(new_id())
    assert not is_uuid("not-a-uuid")
    assert not is_uuid(None)
    assert not is_uuid("g" * 36)


def test_canonical_uuid() -> None:
    value = new_id()
    assert canonical_uuid(value) is value  # already canonical: passed through as is
    assert canonical_uuid(value.upper()) == value
    assert canonical_uuid("nope") is None
    assert canonical_uuid(42) is None


def test_a_forked_child_draws_fresh_randomness() -> None:
    """Ids draw on a buffer of the OS's randomness; a forked child must not reuse what its
    parent left in it (the same millisecond would then give both processes the same ids)."""
    new_id()  # the parent's buffer now holds unused randomness
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its random bits, then exit without running pytest's teardown
        os.write(write, "".join(value[-16:] for value in new_ids(20)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(value[-16:] for value in new_ids(20))
    assert len(child) == len(parent) == 20 * 16
    assert child != parent
