"""Hostile input (reliability suite, reference §A.5 B1, B3, B10), on memory, SQLite and PostgreSQL
under asyncio and trio.

- Payloads: job arguments (Hypothesis-generated and hand-picked edge cases, up to 10 MB) are either
  refused with a typed :class:`~soniq.errors.ValidationError` naming the problem before any row is
  written, or stored and handed back exactly — by ``get_job``, to the job function, and as its
  result. Exactly: same types (a float stays a float), same strings, on every backend.
- Names: job names, queues, dedup keys and schedule names are refused by the validator with a clear
  message, or stored literally; the tables are still there afterwards.
- Corrupted rows (SQLite and PostgreSQL): rows changed behind Soniq's back in SQL are dead-lettered
  with a reason — after one attempt when the arguments cannot be used at all — and the worker keeps
  running other jobs. It also survives a job whose exception text holds characters no database
  can store, or cannot be turned into text at all.
- No ``pickle``/``marshal``/``shelve``/``eval``/``exec`` anywhere in ``src/soniq`` (DESIGN.md §8).
"""

from __future__ import annotations

import ast
import math
import re
import sqlite3
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.from_thread
import anyio.to_thread
import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import soniq
from soniq import JobContext, Soniq, TaskRef
from soniq.errors import InvalidNameError, JobArgumentsError, SerializationError, ValidationError
from tests.helpers import wait_for, wait_for_status

pytestmark = pytest.mark.anyio

T = TypeVar("T")

#: The identifier rule of DESIGN.md §8 (``fullmatch``: a trailing newline is not allowed either).
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
#: The context parameter of the echo job; generated argument names never use it.
CTX = "soniq_ctx_"

NUL_OR_SURROGATE = "NUL character or a lone surrogate"
NOT_JSON = "not JSON-serialisable"
TOO_DEEP = "nested too deeply"

HOSTILE_TEXT = [
    "'; DROP TABLE soniq_jobs; --", "\"x\"", "a\x00b", "\x00", "\ud800", "x\udfff",
    "\ud83d\ude00",  # a surrogate pair spelled as two code points: still two lone surrogates
    "\\u0000", "\\\\u0000", "\\", "\u202eevil\u202c", "\ufeff", "\u2028\u2029", "\U0010ffff",
    "\uffff", "\U0001f600", "e+16", "-0.0", "%s", "$1", "?", "NaN", "null", "é" * 300,
]
HOSTILE_NAMES = [
    "'; DROP TABLE soniq_jobs; --", "\"x\"", "a\x00b", "é" * 300, "\u202eabc", "abc\n", "a b",
    "x" * 128, "x" * 129, "x" * 513, "", "-a", "_a", "a;b", "a'b", "${x}", "a%s", "soniq_jobs",
    "a:b.c-d_e", "١٢٣", "ａｂｃ", "\ud800", "DROP", "0",
]


# Lone surrogates only come from their own category (st.characters() leaves them out).
_chars = st.one_of(st.characters(), st.characters(categories=["Cs"]),
                   st.sampled_from(["\x00", "'", "\"", "\\", ";", "-", "\u202e", "\ufeff"]))
texts = st.text(_chars, max_size=30) | st.sampled_from(HOSTILE_TEXT)
numbers = st.one_of(
    st.integers(),
    st.floats(),  # NaN, infinities, -0.0, subnormals, 1e308 ...
    st.sampled_from([2**63, -(2**63) - 1, 10**400, 10**4299, 1e16, -1.5e300, 5e-324, -0.0,
                     1.7976931348623157e308, 1e-7]),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)
job_args = st.dictionaries(texts.filter(lambda key: key != CTX), json_values, max_size=4)
names = st.one_of(st.text(_chars, max_size=140), st.from_regex(NAME, fullmatch=True),
                  st.sampled_from(HOSTILE_NAMES))


# -- the oracle: what Soniq must do with a value, worked out without Soniq -------------------------
class Refused(Exception):
    """``value`` must be refused; ``reason`` is what the error message must say."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def json_form(value: Any) -> Any:
    """The value every backend must hand back for ``value``, or raise :class:`Refused`.

    Something that is not JSON at all is reported before a NUL or a lone surrogate."""
    problems: set[str] = set()
    result = _json_form(value, problems)
    for reason in (NOT_JSON, NUL_OR_SURROGATE):
        if reason in problems:
            raise Refused(reason)
    return result


def _storable(text: str, problems: set[str]) -> str:
    if "\x00" in text or any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        problems.add(NUL_OR_SURROGATE)
    return text


def _json_form(value: Any, problems: set[str]) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        try:
            str(value)  # past sys.get_int_max_str_digits() an int has no decimal text
        except ValueError:
            problems.add(NOT_JSON)
        return value
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            problems.add(NOT_JSON)
        return 0.0 if value == 0 else value  # jsonb has no negative zero: no backend keeps it
    if isinstance(value, str):
        return _storable(value, problems)
    if isinstance(value, list | tuple):
        return [_json_form(item, problems) for item in value]
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(key, str):
                json_key = _storable(key, problems)
            elif isinstance(key, bool) or key is None:
                json_key = {True: "true", False: "false", None: "null"}[key]
            elif isinstance(key, int | float):
                json_key = repr(key)
            else:
                problems.add(NOT_JSON)
                continue
            out[json_key] = _json_form(item, problems)
        return out
    problems.add(NOT_JSON)
    return None


def assert_same(got: Any, want: Any, path: str = "$") -> None:
    """Equal and of the same type all the way down (``1 == 1.0 == True`` is not good enough)."""
    assert type(got) is type(want), (f"{path}: got {got!r:.80} ({type(got).__name__}), "
                                     f"want {want!r:.80} ({type(want).__name__})")
    if isinstance(want, dict):
        assert got.keys() == want.keys(), f"{path}: {sorted(got)!r:.99} != {sorted(want)!r:.99}"
        for key in want:
            assert_same(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: length {len(got)} != {len(want)}"
        for index, (a, b) in enumerate(zip(got, want, strict=True)):
            assert_same(a, b, f"{path}[{index}]")
    elif isinstance(want, float):
        same_sign = math.copysign(1, got) == math.copysign(1, want)
        assert got == want and same_sign, f"{path}: {got!r} != {want!r}"
    else:
        assert got == want, f"{path}: {got!r:.80} != {want!r:.80}"


def test_the_oracle_can_tell_the_difference() -> None:
    assert_same({"a": [1.0, "x"]}, {"a": [1.0, "x"]})
    for got, want in ((1, 1.0), (True, 1), (0.0, -0.0), ({"a": 1}, {"a": 1, "b": 2}), ("x", "y")):
        with pytest.raises(AssertionError):
            assert_same(got, want)
    assert json_form({"t": (1, {2: None})}) == {"t": [1, {"2": None}]}
    for value, reason in (({"a": float("nan"), "b": "\x00"}, NOT_JSON), (10**4300, NOT_JSON),
                          (["\ud800"], NUL_OR_SURROGATE), ({"k": object()}, NOT_JSON)):
        with pytest.raises(Refused, match=reason):
            json_form(value)


# -- helpers ---------------------------------------------------------------------------------------
@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Both event loops (this folder's conftest pins asyncio for its subprocess tests)."""
    return str(request.param)


@pytest.fixture
async def app(database_url: str | None, backend_name: str) -> AsyncIterator[Soniq]:
    """A Soniq on each backend with short intervals, as in tests/conftest.py: this folder's
    conftest ``app`` (a producer on PostgreSQL only, polling every 5 s) is not what this module
    is about, and shadowed the root fixture, so every test here ran on PostgreSQL only (its
    "memory" and "sqlite" variants included) and waited up to 5 s for a retry's poll."""
    async with Soniq(database_url=database_url,
                     backend=backend_name if database_url is None else None,
                     poll_interval=0.05, heartbeat_interval=0.1, heartbeat_timeout=2.0) as soniq:
        yield soniq


@contextmanager
def labelled(name: str) -> Iterator[None]:
    """Name the hand-picked case in a failure."""
    try:
        yield
    except Exception as exc:
        exc.add_note(f"case: {name}")
        raise


async def explore(strategy: st.SearchStrategy[T], check: Callable[[T], Awaitable[None]], *,
                  examples: int) -> None:
    """Run ``check`` on Hypothesis examples of ``strategy``.

    Hypothesis drives a plain function in a worker thread; each example runs on the test's own
    event loop (asyncio or trio) through ``anyio.from_thread``, so the app's connections stay on
    the loop that opened them. A failing example is shrunk and reported as usual."""

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                     HealthCheck.large_base_example, HealthCheck.filter_too_much])
    @given(strategy)
    def run(value: T) -> None:
        anyio.from_thread.run(check, value)

    await anyio.to_thread.run_sync(run)


async def count_jobs(app: Soniq) -> int:
    return sum(stats["total"] for stats in await app.get_queue_stats())


def register_echo(app: Soniq, received: dict[str, dict[str, Any]]) -> Any:
    @app.job(name="echo", retries=0)
    async def echo(soniq_ctx_: JobContext, **kwargs: Any) -> dict[str, Any]:
        received[soniq_ctx_.job_id] = kwargs
        return kwargs

    return echo


class PayloadChecker:
    """Enqueue one payload and check the promise: refused before writing, or stored exactly.
    ``worker_delivered`` then checks what the job function got and what it returned."""

    def __init__(self, app: Soniq) -> None:
        self.app = app
        self.received: dict[str, dict[str, Any]] = {}
        self.echo = register_echo(app, self.received)
        self.stored: dict[str, Any] = {}

    async def check(self, args: Any, *, want: Any = None,
                    error: type[ValidationError] | None = None, reason: str | None = None) -> None:
        """``want``, or ``error`` and ``reason``, given by hand; else worked out by the oracle."""
        if want is None and error is None:
            try:
                want = json_form(args)
            except Refused as refused:
                error, reason = SerializationError, refused.reason
        before = await count_jobs(self.app)
        if error is not None:
            with pytest.raises(ValidationError) as caught:
                await self.app.enqueue(self.echo, args=args)
            message = caught.value.message
            assert type(caught.value) is error, repr(caught.value)
            assert reason is not None and reason in message, message
            if error is SerializationError:  # names what it refused
                assert "arguments of job 'echo'" in message, message
            assert await count_jobs(self.app) == before, "a refused payload wrote a row"
            return
        job_id = await self.app.enqueue(self.echo, args=args)
        record = await self.app.get_job(job_id)
        assert record is not None
        assert_same(record["args"], want)
        assert await count_jobs(self.app) == before + 1
        self.stored[job_id] = want

    async def worker_delivered(self) -> None:
        await self.app.run_worker(run_once=True)
        for job_id, want in self.stored.items():
            record = await self.app.get_job(job_id)
            assert record is not None
            assert record["status"] == "done", record["last_error"]
            assert_same(self.received[job_id], want, "job function got $")
            assert_same(await self.app.get_result(job_id), want, "result $")


# -- B1: payloads ----------------------------------------------------------------------------------
async def test_generated_payloads_are_refused_before_writing_or_round_trip_exactly(
        app: Soniq) -> None:
    checker = PayloadChecker(app)
    await explore(job_args, checker.check, examples=80)
    await checker.worker_delivered()
    assert checker.stored, "no generated payload was storable: the strategy is broken"


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for _ in range(depth):
        value = [value]
    return value


def _cycle() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    return loop


# (case, args, want) for payloads that must be stored; want=None means "the args themselves".
STORED = [
    ("sql_in_value", {"v": "'; DROP TABLE soniq_jobs; --"}, None),
    ("sql_in_key", {"'; DROP TABLE soniq_jobs; --": "x", "$1": "?"}, None),
    ("escaped_nul_is_just_text", {"v": "\\u0000", "w": "\\\\u0000\\"}, None),
    ("unicode", {"v": "\U0001f600\U0010ffff\uffff\ufeff\u202eevil\u2028", "ключ": "値"}, None),
    ("huge_ints", {"v": [10**400, -(10**4299), 2**63, -(2**63) - 1]}, None),
    ("big_floats_stay_floats", {"v": [1e16, -1.5e300, 1.7976931348623157e308, 1e22]}, None),
    ("small_floats", {"v": [5e-324, 1e-7, -2.5e-300, 0.1]}, None),
    ("negative_zero_is_zero_everywhere", {"v": -0.0}, {"v": 0.0}),
    ("float_spelling_inside_strings_untouched", {"v": "1e+16 -0.0", "1e+16": -0.0},
     {"v": "1e+16 -0.0", "1e+16": 0.0}),
    ("tuple_is_a_list", {"v": (1, (2, "x"))}, {"v": [1, [2, "x"]]}),
    ("nested_keys_become_strings", {"v": {2: "a", 1.5: "b", True: "c", None: "d"}},
     {"v": {"2": "a", "1.5": "b", "true": "c", "null": "d"}}),
    ("deep_nesting_within_bounds", {"v": _nested(100)}, None),
    ("empty", {}, None),
]
# (case, args, error type, what the message must say) for payloads that must be refused.
REFUSED = [
    ("nul_in_value", {"v": "a\x00b"}, SerializationError, NUL_OR_SURROGATE),
    ("nul_in_key", {"a\x00b": 1}, SerializationError, NUL_OR_SURROGATE),
    ("nul_in_nested_key", {"v": [{"k\x00": 1}]}, SerializationError, NUL_OR_SURROGATE),
    ("lone_surrogate", {"v": "\ud800"}, SerializationError, NUL_OR_SURROGATE),
    ("surrogate_pair_as_code_points", {"v": "\ud83d\ude00"}, SerializationError, NUL_OR_SURROGATE),
    ("nan", {"v": float("nan")}, SerializationError, NOT_JSON),
    ("infinity", {"v": [float("inf")]}, SerializationError, NOT_JSON),
    ("minus_infinity", {"v": {"x": float("-inf")}}, SerializationError, NOT_JSON),
    ("int_past_the_digit_limit", {"v": 10**4300}, SerializationError, NOT_JSON),
    ("object", {"v": object()}, SerializationError, NOT_JSON),
    ("set", {"v": {1, 2}}, SerializationError, NOT_JSON),
    ("bytes", {"v": b"\x00\xff"}, SerializationError, NOT_JSON),
    ("datetime", {"v": datetime.now(UTC)}, SerializationError, NOT_JSON),
    ("decimal", {"v": Decimal("1.5")}, SerializationError, NOT_JSON),
    ("complex", {"v": 1 + 2j}, SerializationError, NOT_JSON),
    ("tuple_key", {"v": {(1, 2): 3}}, SerializationError, NOT_JSON),
    ("ten_thousand_deep", {"v": _nested(10_000)}, SerializationError, TOO_DEEP),
    ("cycle", {"v": _cycle()}, SerializationError, TOO_DEEP),
    ("top_level_key_not_a_string", {1: "x"}, JobArgumentsError, "keywords must be strings"),
    ("arguments_not_a_dict", [("v", 1)], JobArgumentsError, "args must be a dict"),
]


async def test_edge_case_payloads_on_every_backend(app: Soniq) -> None:
    checker = PayloadChecker(app)
    for name, args, want in STORED:
        with labelled(name):
            await checker.check(args, want=args if want is None else want)
    for name, args, error, reason in REFUSED:
        with labelled(name):
            await checker.check(args, error=error, reason=reason)
    with labelled("worker"):
        await checker.worker_delivered()


async def test_a_ten_megabyte_argument_round_trips(app: Soniq) -> None:
    size = 10 * 2**20  # characters; more bytes than that in UTF-8
    blob = ("soniq é€\U0001f600 '; -- \\ \" " * (size // 10))[:size]
    got: dict[str, str] = {}

    @app.job(name="big", retries=0)
    async def big(blob: str) -> int:
        got["blob"] = blob
        return len(blob)

    job_id = await app.enqueue(big, blob=blob)
    record = await app.get_job(job_id)
    assert record is not None
    stored_intact = record["args"]["blob"] == blob  # not in the assert: no 10 MB diff on failure
    assert stored_intact
    await app.run_worker(run_once=True)
    delivered_intact = got["blob"] == blob
    assert delivered_intact
    assert await app.get_result(job_id) == len(blob)


# -- B3: names -------------------------------------------------------------------------------------
async def tables_exist(app: Soniq, database_url: str | None) -> None:
    if app.backend.name == "postgres":
        async with app.backend.acquire() as conn:
            assert await conn.fetchval("SELECT to_regclass('soniq_jobs') IS NOT NULL")
            assert await conn.fetchval("SELECT to_regclass('soniq_schedules') IS NOT NULL")
    elif app.backend.name == "sqlite":
        assert database_url is not None
        with sqlite3.connect(database_url) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
        conn.close()
        assert {"soniq_jobs", "soniq_schedules"} <= tables
    await app.list_jobs(limit=1)


async def test_hostile_names_are_refused_or_stored_literally(app: Soniq,
                                                             database_url: str | None) -> None:
    echo = register_echo(app, {})
    dedup_holders: dict[str, str] = {}

    async def check(name: str) -> None:
        valid = NAME.fullmatch(name) is not None
        before = await count_jobs(app)
        added = 0
        # Job name (a producer enqueues by name; the worker side registers it the same way).
        if valid:
            job_id = await app.enqueue(TaskRef(name), args={})
            record = await app.get_job(job_id)
            assert record is not None and record["job_name"] == name
            added += 1
        else:
            with pytest.raises(InvalidNameError, match="invalid job name"):
                await app.enqueue(name, args={})
            with pytest.raises(InvalidNameError, match="invalid job name"):
                TaskRef(name)
        # Queue.
        if valid:
            job_id = await app.enqueue(echo, queue=name)
            record = await app.get_job(job_id)
            assert record is not None and record["queue"] == name
            assert job_id in {job["id"] for job in await app.list_jobs(queue=name)}
            added += 1
        else:
            with pytest.raises(InvalidNameError, match="invalid queue name"):
                await app.enqueue(echo, queue=name)
            with pytest.raises(InvalidNameError, match="invalid queue name"):
                await app.list_jobs(queue=name)
        # Dedup key: free text, 1-512 characters a database can store.
        storable = 0 < len(name) <= 512 and "\x00" not in name and not any(
            0xD800 <= ord(c) <= 0xDFFF for c in name)
        if storable:
            job_id = await app.enqueue(echo, dedup_key=name)
            if name not in dedup_holders:
                dedup_holders[name] = job_id
                added += 1
            assert job_id == dedup_holders[name], "the dedup key was not honoured"
            record = await app.get_job(job_id)
            assert record is not None and record["dedup_key"] == name
            assert await app.enqueue(echo, dedup_key=name) == job_id
        else:
            with pytest.raises(ValidationError, match="dedup_key"):
                await app.enqueue(echo, dedup_key=name)
        # Schedule name.
        if valid:
            await app.scheduler.add(name, every=3600, target=echo)
            schedule = await app.scheduler.get(name)
            assert schedule is not None and schedule["name"] == name
        else:
            with pytest.raises(InvalidNameError, match="invalid schedule name"):
                await app.scheduler.add(name, every=3600, target=echo)
        assert await count_jobs(app) == before + added

    await explore(names, check, examples=60)
    for name in HOSTILE_NAMES:
        with labelled(repr(name)):
            await check(name)
    await tables_exist(app, database_url)


# -- B1 raw side: rows corrupted in SQL ------------------------------------------------------------
#: (case, SET clause, error type, message fragment, attempts used). The job is ``need(x: int)`` with
#: one retry. Arguments that cannot be used at all end after ONE attempt; arguments that decode and
#: bind but make the function fail are an ordinary failure: retried, then dead-lettered.
CORRUPTIONS = [
    ("args_array", "args = '[1, 2]'", "CorruptArguments", "a list, not an object", 1),
    ("args_null", "args = 'null'", "CorruptArguments", "a NoneType, not an object", 1),
    ("args_string", "args = '\"x\"'", "CorruptArguments", "a str, not an object", 1),
    ("args_missing_parameter", "args = '{}'", "CorruptArguments",
     "missing a required argument: 'x'", 1),
    ("args_unknown_parameter", "args = '{\"x\": 1, \"bogus\": 2}'", "CorruptArguments",
     "unexpected keyword argument 'bogus'", 1),
    ("args_wrong_type", "args = '{\"x\": \"abc\"}'", "TypeError", "'<' not supported", 2),
    ("args_nested_too_deep", "args = '{\"x\": " + "[" * 5000 + "]" * 5000 + "}'",
     "CorruptArguments", "cannot be decoded", 1),
    ("max_attempts_zero", "max_attempts = 0, args = '{\"x\": -1}'", "ValueError", "negative", 1),
    ("max_attempts_negative", "max_attempts = -5, args = '{\"x\": -1}'", "ValueError", "negative",
     1),
]
#: SQLite does not check JSON or text: these cannot happen on PostgreSQL (jsonb, UTF-8 text).
SQLITE_CORRUPTIONS = [
    ("args_not_json", "args = 'not json'", "CorruptArguments", "cannot be decoded", 1),
    ("args_not_text", "args = X'FFFE00'", "CorruptArguments", "cannot be decoded", 1),
    ("errors_not_json", "errors = 'garbage', args = '{\"x\": -1}'", "ValueError", "negative", 2),
]
#: (case, SET clause, message fragment): job names no worker registered. The worker leaves
#: them queued, attempts untouched (rolling deploys); the cleanup dead-letters them after
#: ``unknown_job_grace`` (here called at once, grace 0), its error naming the job.
UNKNOWN_NAMES = [
    ("unknown_job", "job_name = 'no.such.job'", "'no.such.job'"),
    ("hostile_job_name", "job_name = 'x''; DROP TABLE soniq_jobs; --'", "DROP TABLE soniq_jobs"),
]
SQLITE_UNKNOWN_NAMES = [("job_name_with_nul", "job_name = 'a' || char(0) || 'b'", "'a\\x00b'")]
#: Columns the worker reads without a None check: the schema must refuse NULL in each.
NULL_REFUSED = (sqlite3.IntegrityError, asyncpg.NotNullViolationError)
NOT_NULL = ["job_name", "queue", "priority", "status", "args", "attempts", "max_attempts",
            "scheduled_at", "created_at", "errors"]


async def _sql(app: Soniq, database_url: str, statement: str, job_id: str) -> None:
    if app.backend.name == "postgres":
        async with app.backend.acquire() as conn:
            await conn.execute(statement.replace("?", "$1::uuid"), job_id)
        return

    def run() -> None:
        conn = sqlite3.connect(database_url, timeout=10)
        try:
            with conn:
                conn.execute(statement, (job_id,))
        finally:
            conn.close()

    await anyio.to_thread.run_sync(run)


@pytest.mark.parametrize("backend_name",
                         ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def test_corrupted_rows_are_dead_lettered_and_the_worker_keeps_going(
        app: Soniq, database_url: str) -> None:
    @app.job(name="need", retries=1)
    async def need(x: int) -> int:
        if x < 0:
            raise ValueError("negative")
        return x + 1

    cases = CORRUPTIONS + (SQLITE_CORRUPTIONS if app.backend.name == "sqlite" else [])
    unknown = UNKNOWN_NAMES + (SQLITE_UNKNOWN_NAMES if app.backend.name == "sqlite" else [])
    ids: dict[str, str] = {}
    for case, assignment, *_ in [*cases, *unknown]:
        ids[case] = await app.enqueue(need, x=1)
        await _sql(app, database_url, f"UPDATE soniq_jobs SET {assignment} WHERE id = ?", ids[case])
    for column in NOT_NULL:  # the schema allows no NULL where the code expects a value
        with labelled(f"NULL in {column}"), pytest.raises(NULL_REFUSED, match="(?i)null"):
            await _sql(app, database_url, f"UPDATE soniq_jobs SET {column} = NULL WHERE id = ?",
                       ids["args_array"])
    assert await count_jobs(app) == len(cases) + len(unknown)

    async with app.running_worker(concurrency=4):
        for case, _, error_type, fragment, attempts in cases:
            with labelled(case):
                record = await wait_for_status(app, ids[case], "dead_letter", "done")
                assert record["status"] == "dead_letter"
                assert record["attempts"] == attempts
                errors = record["errors"]
                if case == "errors_not_json":  # what was there is kept, as text, in front
                    assert errors[0] == "garbage"
                    errors = errors[1:]
                assert len(errors) == attempts
                assert errors[-1]["type"] == error_type
                assert fragment in errors[-1]["message"], errors[-1]["message"]
                assert record["last_error"] == f"{error_type}: {errors[-1]['message']}"
        # The worker survived all of it and still runs ordinary jobs.
        ok = await app.enqueue(need, x=5)
        record = await wait_for_status(app, ok, "done", "dead_letter")
        assert record["status"] == "done" and record["result"] == 6
        for case, *_ in unknown:  # left queued, attempt refunded: never run nor dead-lettered
            with labelled(case):
                await wait_for(lambda case=case: _left(app, ids[case]))
    ended = await app.backend.dead_letter_unknown(["need"], grace=0)
    assert sorted(ended) == sorted(ids[case] for case, *_ in unknown)
    for case, _, fragment in unknown:
        with labelled(case):
            record = await app.get_job(ids[case])
            assert record is not None and record["status"] == "dead_letter"
            assert record["attempts"] == 0
            [error] = record["errors"]
            assert error["type"] == "UnknownJob"
            assert fragment in error["message"], error["message"]
    # What cannot be decoded is shown as the stored text, not as an error of every read.
    record = await app.get_job(ids["args_nested_too_deep"])
    assert record is not None and isinstance(record["args"], str)
    assert record["args"].replace(" ", "").startswith('{"x":[[[')
    listed = {job["id"] for job in await app.dead_letter.list_jobs(limit=100)}
    assert set(ids.values()) <= listed
    if app.backend.name == "sqlite":
        record = await app.get_job(ids["args_not_json"])
        assert record is not None and record["args"] == "not json"
    await tables_exist(app, database_url)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text for this exception")


async def test_exception_text_that_cannot_be_stored_or_rendered_does_not_stop_the_worker(
        app: Soniq) -> None:
    @app.job(name="shout", retries=1)
    async def shout(text: str) -> None:
        raise ValueError(text + "\x00" + "\ud800")

    @app.job(name="mute", retries=0)
    async def mute() -> None:
        raise Unprintable

    @app.job(name="fine")
    async def fine() -> str:
        return "ok"

    try:
        async with app.running_worker(concurrency=2):
            shouted = await app.enqueue(shout, text="boom")
            muted = await app.enqueue(mute)
            shout_record = await wait_for_status(app, shouted, "dead_letter")
            mute_record = await wait_for_status(app, muted, "dead_letter")
            ok = await app.enqueue(fine)
            assert (await wait_for_status(app, ok, "done"))["result"] == "ok"
    except Exception as exc:  # its text holds a lone surrogate, which pytest-xdist cannot report
        text = "".join(traceback.format_exception(exc)).encode("ascii", "backslashreplace")
        raise AssertionError(f"the worker failed:\n{text.decode()}") from None
    # NUL and lone surrogates are stored as visible escapes, in the message and the traceback.
    assert [e["message"] for e in shout_record["errors"]] == ["boom\\u0000\\ud800"] * 2
    assert "boom\\u0000\\ud800" in shout_record["errors"][-1]["traceback"]
    assert shout_record["last_error"] == "ValueError: boom\\u0000\\ud800"
    assert mute_record["last_error"] == "Unprintable: <Unprintable: str() failed>"


# -- B10: no pickle, marshal, shelve, eval or exec -------------------------------------------------
BANNED_MODULES = {"pickle", "_pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
BANNED_CALLS = {"eval", "exec"}


def banned_uses(source: str, filename: str = "<snippet>") -> list[str]:
    """Every import of a pickling module and every call of eval/exec in ``source``."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: import {a.name}" for a in node.names
                      if a.name.split(".")[0] in BANNED_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in BANNED_MODULES:
                found.append(f"{where}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name)
                    else func.attr if isinstance(func, ast.Attribute)
                    and isinstance(func.value, ast.Name) and func.value.id == "builtins"
                    else None)
            if name in BANNED_CALLS:
                found.append(f"{where}: {name}()")
            elif name in ("__import__", "import_module") or (
                    isinstance(func, ast.Attribute) and func.attr == "import_module"):
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Constant) and isinstance(first.value, str) \
                        and first.value.split(".")[0] in BANNED_MODULES:
                    found.append(f"{where}: dynamic import of {first.value}")
    return found


def test_the_scan_flags_every_banned_construct() -> None:
    snippets = [
        "import pickle", "import os, marshal", "import shelve as s", "from pickle import loads",
        "from _pickle import *", "import cloudpickle.cloudpickle", "eval('1')", "exec('x = 1')",
        "builtins.eval('1')", "builtins.exec(code)", "__import__('pickle')",
        "importlib.import_module('marshal')", "def f():\n    return eval(x)",
    ]
    for snippet in snippets:
        assert banned_uses(snippet), snippet
    harmless = ("import json\nconn.execute('x')\nre.compile('x')\nmodel.evaluate()\n"
                "ast.literal_eval('1')\nlogger.exception('x')")
    assert banned_uses(harmless) == []


def test_no_pickle_marshal_shelve_eval_or_exec_in_soniq() -> None:
    package = Path(soniq.__file__).parent
    files = sorted(package.rglob("*.py"))
    assert len(files) > 50, f"found only {len(files)} files under {package}"
    found = [use for path in files for use in banned_uses(path.read_text(encoding="utf-8"),
                                                           str(path.relative_to(package)))]
    assert found == []


async def _left(app: Soniq, job_id: str) -> bool:
    record = await app.get_job(job_id)
    return (record is not None and record["status"] == "queued" and record["attempts"] == 0
            and record["errors"] == [])
