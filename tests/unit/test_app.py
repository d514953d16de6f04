"""The Soniq facade against the spec (shared/spec/soniq-class.md), on every backend."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pydantic
import pytest

from soniq import JobContext, Soniq, TaskRef, Worker
from soniq.errors import (
    AppClosedError,
    ConfigurationError,
    DuplicateJobError,
    InvalidNameError,
    JobArgumentsError,
    SerializationError,
    SoniqError,
    UnknownJobError,
    UnsupportedOperationError,
    ValidationError,
)
from soniq.types import JobOutcome, JobStatus

pytestmark = pytest.mark.anyio

WORKER = "00000000-0000-7000-8000-0000000000aa"


def register(app: Soniq) -> None:
    @app.job(name="send_email", queue="emails", retries=5)
    async def send_email(to: str, subject: str = "hi") -> str:
        return to

    @app.job(name="add")
    def add(a: int, b: int, ctx: JobContext) -> int:
        return a + b


async def finish(app: Soniq, result: str = "null") -> list[str]:
    """Play the worker's part (the runtime issue adds the real one): finish every due job."""
    claimed = await app.backend.claim_jobs(WORKER, None, 100)
    outcomes = [JobOutcome(c.id, c.lease_id, JobStatus.DONE, result=result) for c in claimed]
    return await app.backend.complete_jobs(outcomes)


# -- backend selection and lifecycle ---------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("postgresql://user:secret@db.example/app", "postgres"),
        ("postgres://localhost/app", "postgres"),
        ("jobs.db", "sqlite"),
        ("/var/data/jobs.sqlite", "sqlite"),
        ("relative/jobs.sqlite3", "sqlite"),
        ("sqlite:///jobs.db", "sqlite"),
        ("sqlite:////abs/jobs.db", "sqlite"),
    ],
)
def test_backend_is_detected_from_the_url(url: str, kind: str) -> None:
    app = Soniq(database_url=url)
    assert app.backend.name == kind
    assert not app.is_initialized  # construction does no I/O


def test_backend_names_and_instances() -> None:
    assert Soniq(backend="memory").backend.name == "memory"
    assert Soniq(database_url="x.db", backend="sqlite").backend.name == "sqlite"
    assert Soniq(backend="postgres").backend.name == "postgres"
    memory = Soniq(backend="memory").backend
    assert Soniq(backend=memory).backend is memory
    with pytest.raises(ConfigurationError, match="did you mean 'postgres'"):
        Soniq(backend="postgress")
    with pytest.raises(ConfigurationError, match="cannot tell"):
        Soniq(database_url="mysql://localhost/x")
    with pytest.raises(ConfigurationError, match="three slashes"):
        Soniq(database_url="sqlite://jobs.db")
    with pytest.raises(ConfigurationError):
        Soniq(backend=object())  # type: ignore[arg-type]


def test_default_url_comes_from_env_then_the_spec_default(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SONIQ_DATABASE_URL", raising=False)
    app = Soniq()
    assert app.settings.database_url == "postgresql://postgres@localhost/soniq"
    assert app.backend.name == "postgres"
    monkeypatch.setenv("SONIQ_DATABASE_URL", str(tmp_path / "env.db"))
    assert Soniq().backend.name == "sqlite"
    assert Soniq(database_url="postgresql://h/db").settings.database_url == "postgresql://h/db"


def test_repr_hides_the_password() -> None:
    app = Soniq(database_url="postgresql://user:hunter2@db.example/app")
    assert "hunter2" not in repr(app) and "hunter2" not in repr(app.backend)


async def test_sqlite_initialises_lazily_on_first_use(tmp_path: Path) -> None:
    path = tmp_path / "lazy.db"
    app = Soniq(database_url=str(path))
    register(app)
    assert not path.exists() and not app.is_initialized
    job_id = await app.enqueue("send_email", to="a@b.c")
    assert path.exists() and app.is_initialized
    record = await app.get_job(job_id)
    assert record is not None and record["status"] == "queued"
    await app.close()


async def test_close_twice_and_use_after_close(app: Soniq) -> None:
    register(app)
    await app.enqueue("send_email", to="x@y.z")
    await app.close()
    await app.close()
    assert app.is_closed and not app.is_initialized
    with pytest.raises(AppClosedError):
        await app.enqueue("send_email", to="x@y.z")
    with pytest.raises(AppClosedError):
        await app.get_queue_stats()


async def test_every_call_on_a_closed_app_is_refused_alike(tmp_path: Path) -> None:
    """One lifecycle guard: each public call on a closed app raises the same error, before I/O."""
    app = Soniq(database_url=str(tmp_path / "closed.db"))
    register(app)
    await app.close()
    calls = [app.ensure_initialized, app.setup, app.database_info, app.get_queue_stats,
             lambda: app.enqueue("send_email", to="a"),
             lambda: app.enqueue_many("send_email", [{"to": "a"}])]
    for call in calls:
        with pytest.raises(AppClosedError, match=r"^this Soniq instance is closed; create a new one$"):
            await call()
    assert app.is_closed and not app.is_initialized
    assert not (tmp_path / "closed.db").exists()


async def test_closing_while_opening_stays_closed() -> None:
    from soniq.backends.memory import MemoryBackend

    backend, gate = MemoryBackend(), anyio.Event()
    initialize = backend.initialize

    async def slow_initialize() -> None:
        await gate.wait()
        await initialize()

    backend.initialize = slow_initialize  # type: ignore[method-assign]
    app = Soniq(backend=backend)
    async with anyio.create_task_group() as tg:
        tg.start_soon(app.ensure_initialized)
        await anyio.wait_all_tasks_blocked()
        await app.close()
        gate.set()
    assert app.is_closed and not app.is_initialized
    with pytest.raises(AppClosedError):
        await app.get_queue_stats()


@pytest.mark.parametrize("concurrency", [0, -1, 1.5, "4"])
def test_a_bad_concurrency_is_one_validation_error(concurrency: object) -> None:
    """``app.worker()`` and the runtime's ``Worker`` refuse it alike (ValidationError is also
    a ValueError)."""
    app = Soniq(backend="memory")
    with pytest.raises(ValidationError, match=r"concurrency must be an integer >= 1"):
        app.worker(concurrency=concurrency)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match=r"concurrency must be an integer >= 1"):
        Worker(backend=app.backend, registry=app.registry, settings=app.settings, hooks=app.hooks,
               events=app.events, codec=app.codec, concurrency=concurrency)  # type: ignore[arg-type]


async def test_async_context_manager_closes(tmp_path: Path) -> None:
    async with Soniq(database_url=str(tmp_path / "cm.db")) as app:
        assert app.is_initialized
        register(app)
        await app.enqueue("send_email", to="a@b.c")
    assert app.is_closed
    with pytest.raises(RuntimeError, match="boom"):
        async with Soniq(backend="memory") as other:
            raise RuntimeError("boom")
    assert other.is_closed


async def test_two_instances_are_independent(tmp_path: Path) -> None:
    one = Soniq(database_url=str(tmp_path / "one.db"), concurrency=2)
    two = Soniq(backend="memory", concurrency=9)

    @one.job(name="only_one")
    async def only_one() -> None: ...

    assert "only_one" in one.registry and "only_one" not in two.registry
    await one.enqueue("only_one")
    with pytest.raises(UnknownJobError):
        await two.enqueue("only_one")
    assert [s["total"] for s in await one.get_queue_stats()] == [1]
    assert await two.get_queue_stats() == []
    assert (one.settings.concurrency, two.settings.concurrency) == (2, 9)
    await one.close()
    assert not two.is_closed
    await two.close()


# -- enqueue ---------------------------------------------------------------------------------

async def test_enqueue_shapes(app: Soniq) -> None:
    register(app)
    send_email = app.registry.get("send_email")
    assert send_email is not None
    by_func = await app.enqueue(send_email.func, to="a@x.io")
    by_name = await app.enqueue("send_email", args={"to": "b@x.io", "subject": "s"})
    by_ref = await app.enqueue(TaskRef("send_email"), to="c@x.io")
    records = [await app.get_job(i) for i in (by_func, by_name, by_ref)]
    assert [r["args"] for r in records if r] == [
        {"to": "a@x.io"}, {"to": "b@x.io", "subject": "s"}, {"to": "c@x.io"}]
    for record in records:
        assert record is not None
        assert (record["job_name"], record["queue"], record["max_attempts"]) == ("send_email", "emails", 6)
        assert record["priority"] == 100


async def test_options_override_and_settings_defaults(backend_name: str, database_url: str | None) -> None:
    app = Soniq(database_url=database_url, backend=None if database_url else backend_name,
                priority=42, max_retries=1)

    @app.job(name="plain")
    async def plain() -> None: ...

    default = await app.get_job(await app.enqueue("plain"))
    chosen = await app.get_job(await app.enqueue("plain", queue="other", priority=-5))
    assert default is not None and chosen is not None
    assert (default["priority"], default["max_attempts"], default["queue"]) == (42, 2, "default")
    assert (chosen["priority"], chosen["queue"]) == (-5, "other")
    await app.close()


async def test_scheduled_at_forms(app: Soniq) -> None:
    register(app)
    before = datetime.now(UTC)
    at = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    ids = [
        await app.enqueue("send_email", to="a", scheduled_at=at),
        await app.enqueue("send_email", to="a", scheduled_at=timedelta(hours=1)),
        await app.enqueue("send_email", to="a", scheduled_at=90),
        await app.schedule("send_email", at.astimezone(UTC), args={"to": "b"}),
    ]
    records = [await app.get_job(i) for i in ids]
    times = [r["scheduled_at"] for r in records if r]
    assert times[0] == at and times[3] == at
    assert timedelta(minutes=59) < times[1] - before < timedelta(minutes=61)
    assert timedelta(seconds=89) < times[2] - before < timedelta(seconds=100)
    assert await app.backend.claim_jobs(WORKER, None, 10) == []  # none is due yet


async def test_unique_and_dedup_key(app: Soniq) -> None:
    register(app)

    @app.job(name="refresh", unique=True)
    async def refresh(user: int) -> None: ...

    first = await app.enqueue(refresh, user=1)
    assert await app.enqueue(refresh, user=1) == first
    assert await app.enqueue(refresh, user=2) != first
    assert await app.enqueue("send_email", to="a", unique=True) == \
        await app.enqueue("send_email", to="a", unique=True)
    keyed = await app.enqueue("send_email", to="x", dedup_key="welcome:7")
    assert await app.enqueue("send_email", to="y", dedup_key="welcome:7") == keyed
    assert len(await app.list_jobs()) == 4


async def test_unique_enqueues_racing_make_one_job(app: Soniq) -> None:
    @app.job(name="once", unique=True)
    async def once(n: int) -> None: ...

    ids: list[str] = []

    async def enqueue() -> None:
        ids.append(await app.enqueue(once, n=1))

    async with anyio.create_task_group() as tg:
        for _ in range(50):
            tg.start_soon(enqueue)
    assert len(set(ids)) == 1
    assert [s["queued"] for s in await app.get_queue_stats()] == [1]


async def test_enqueue_many(app: Soniq) -> None:
    register(app)
    ids = await app.enqueue_many("send_email", [{"to": f"u{i}"} for i in range(300)], queue="bulk")
    assert len(ids) == len(set(ids)) == 300
    assert await app.enqueue_many("send_email", []) == []
    stats = await app.get_queue_stats()
    assert stats == [{"queue": "bulk", "total": 300, "waiting": 0, "queued": 300, "processing": 0, "done": 0,
                      "dead_letter": 0, "cancelled": 0}]
    first = await app.get_job(ids[0])
    assert first is not None and first["args"] == {"to": "u0"}


async def test_enqueue_many_validates_everything_first(app: Soniq) -> None:
    register(app)
    with pytest.raises(JobArgumentsError, match=r"args_list\[2\]"):
        await app.enqueue_many("send_email", [{"to": "a"}, {"to": "b"}, {"nope": 1}])
    with pytest.raises(JobArgumentsError, match=r"args_list\[1\] must be a dict"):
        await app.enqueue_many("send_email", [{"to": "a"}, ["to"]])  # type: ignore[list-item]
    with pytest.raises(JobArgumentsError):
        await app.enqueue_many("send_email", {"to": "a"})  # type: ignore[arg-type]

    @app.job(name="uniq", unique=True)
    async def uniq(n: int) -> None: ...

    # unique jobs are accepted (resolved against their keys), and validated first too
    with pytest.raises(JobArgumentsError, match=r"args_list\[1\]"):
        await app.enqueue_many(uniq, [{"n": 1}, {"nope": 1}])
    assert await app.list_jobs() == []


async def test_enqueue_many_writes_nothing_when_a_late_element_is_invalid(app: Soniq) -> None:
    """On PostgreSQL the first pieces of the COPY are on the wire before element 700 is read:
    its error aborts the statement, and nothing is stored, as on the other backends."""
    register(app)
    args = [{"to": f"u{i}"} for i in range(1000)]
    args[700] = {"to": "u700", "nope": 1}
    with pytest.raises(JobArgumentsError, match=r"args_list\[700\]"):
        await app.enqueue_many("send_email", args)
    assert await app.list_jobs() == []
    assert len(await app.enqueue_many("send_email", args[:700])) == 700  # the connection is fine


def test_a_job_stream_fails_again_where_it_failed() -> None:
    """The rows of enqueue_many are built as read; the element that failed fails every later
    read too, instead of the stream looking shorter."""
    app = Soniq(backend="memory")
    register(app)
    stream = app.producer.jobs("send_email", [{"to": "a"}, {"nope": 1}, {"to": "c"}], queue=None,
                               priority=None, scheduled_at=None)
    assert len(stream) == 3
    for _ in range(2):
        with pytest.raises(JobArgumentsError, match=r"args_list\[1\]"):
            list(stream)
    with pytest.raises(JobArgumentsError, match=r"args_list\[1\]"):
        stream[2]


async def test_enqueue_many_stores_any_text_and_time(app: Soniq) -> None:
    """Arguments a text COPY would have to escape (backslashes, tabs, newlines, ``\\N``)
    come back as given, with the call's queue, priority and time on every row."""
    register(app)
    odd = ["back\\slash", "tab\there", "new\nline", "\\N", "\r\n", "é ☃ 𝄞", '"quoted"', ""]
    run_at = datetime(2030, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ids = await app.enqueue_many("send_email", [{"to": text, "subject": text} for text in odd],
                                 queue="odd", priority=7, scheduled_at=run_at)
    for job_id, text in zip(ids, odd, strict=True):
        record = await app.get_job(job_id)
        assert record is not None
        assert record["args"] == {"to": text, "subject": text}
        assert (record["queue"], record["priority"], record["scheduled_at"]) == ("odd", 7, run_at)
        assert record["max_attempts"] == 6 and record["job_name"] == "send_email"


# -- bad input: typed errors, nothing written -------------------------------------------------

class Order(pydantic.BaseModel):
    order_id: int
    amount: float


async def test_bad_input_is_rejected_before_writing(app: Soniq) -> None:
    register(app)

    @app.job(name="charge", validate=Order)
    async def charge(order_id: int, amount: float) -> None: ...

    bad_calls = [
        (UnknownJobError, lambda: app.enqueue("send_emial", to="a")),
        (InvalidNameError, lambda: app.enqueue("x'; DROP TABLE soniq_jobs; --")),
        (InvalidNameError, lambda: app.enqueue("send_email", to="a", queue="emails; DELETE")),
        (InvalidNameError, lambda: app.enqueue("send_email", to="a", queue="")),
        (JobArgumentsError, lambda: app.enqueue("send_email", too="a")),
        (JobArgumentsError, lambda: app.enqueue("send_email")),
        (JobArgumentsError, lambda: app.enqueue("send_email", args={"to": "a"}, subject="b")),
        (JobArgumentsError, lambda: app.enqueue(charge, order_id="abc", amount=1)),
        (SerializationError, lambda: app.enqueue("send_email", to=object())),
        (SerializationError, lambda: app.enqueue("send_email", to=float("nan"))),
        (SerializationError, lambda: app.enqueue("send_email", to="nul\x00byte")),
        (SerializationError, lambda: app.enqueue("send_email", to="\ud800")),
        (ValidationError, lambda: app.enqueue("send_email", to="a", scheduled_at=datetime(2030, 1, 1))),
        (ValidationError, lambda: app.enqueue("send_email", to="a", priority=10**6)),
        (ValidationError, lambda: app.enqueue("send_email", to="a", dedup_key="")),
        (ValidationError, lambda: app.enqueue(42)),  # type: ignore[arg-type]
        (UnknownJobError, lambda: app.enqueue(print)),
    ]
    for error, call in bad_calls:
        with pytest.raises(error) as info:
            await call()
        assert isinstance(info.value, SoniqError) and info.value.message
    assert await app.list_jobs() == []
    ok = await app.get_job(await app.enqueue(charge, order_id="7", amount=2))
    assert ok is not None and ok["args"] == {"order_id": 7, "amount": 2.0}


async def test_connection_needs_postgres(tmp_path: Path) -> None:
    for app in (Soniq(backend="memory"), Soniq(database_url=str(tmp_path / "t.db"))):
        register(app)
        with pytest.raises(UnsupportedOperationError, match="PostgreSQL"):
            await app.enqueue("send_email", to="a", connection=object())
        with pytest.raises(UnsupportedOperationError):
            async with app.backend.acquire():
                pass
        assert await app.list_jobs() == []
        await app.close()


async def test_enqueue_by_unregistered_name_when_validation_is_off() -> None:
    producer = Soniq(backend="memory", enqueue_validation="none")
    job_id = await producer.enqueue("billing.charge", args={"id": 1}, queue="billing")
    record = await producer.get_job(job_id)
    assert record is not None and record["job_name"] == "billing.charge"
    ref = TaskRef("billing.refund", args_model=Order, default_queue="billing")
    strict = Soniq(backend="memory")
    ref_id = await strict.enqueue(ref, order_id=1, amount=3)
    ref_record = await strict.get_job(ref_id)
    assert ref_record is not None and ref_record["queue"] == "billing"
    with pytest.raises(JobArgumentsError):
        await strict.enqueue(ref, order_id="x", amount=3)


# -- registration ----------------------------------------------------------------------------

def test_job_options_are_checked() -> None:
    app = Soniq(backend="memory")
    with pytest.raises(ConfigurationError, match="did you mean 'retries'"):
        app.job(retrys=3)(lambda: None)
    with pytest.raises(ConfigurationError, match="clash"):
        @app.job(name="bad")
        def bad(queue: str) -> None: ...
    with pytest.raises(InvalidNameError):
        app.job(name="no spaces")(lambda: None)
    with pytest.raises(ConfigurationError, match="retry_delay"):
        app.job(name="neg", retry_delay=-1)(lambda: None)
    with pytest.raises(ConfigurationError, match="pydantic"):
        app.job(name="m", validate=dict)(lambda: None)

    @app.job(name="dup")
    def first() -> None: ...

    with pytest.raises(DuplicateJobError):
        @app.job(name="dup")
        def second() -> None: ...


def test_job_decorator_keeps_the_function_and_derives_names() -> None:
    app = Soniq(backend="memory")

    async def plain(x: int) -> int:
        return x

    assert app.job(plain) is plain
    spec = app.registry.spec_for(plain)
    assert spec is not None and spec.name == f"{__name__}.plain" and spec.is_async

    def with_context(ctx: JobContext, n: int) -> None: ...

    decorated = app.job(retries=2, retry_delay=[1, 5], timeout=0)(with_context)
    assert decorated is with_context
    spec = app.registry.spec_for(with_context)
    assert spec is not None
    assert (spec.context_param, spec.max_retries, spec.retry_delay, spec.timeout) == \
        ("ctx", 2, (1.0, 5.0), 0.0)


# -- management methods ----------------------------------------------------------------------

async def test_management_methods_return_values(app: Soniq) -> None:
    register(app)
    done_id = await app.enqueue("send_email", to="done")
    assert await finish(app, result='{"sent": true}') == [done_id]
    waiting = await app.enqueue("send_email", to="wait")

    record = await app.get_job(done_id)
    assert isinstance(record, dict) and record["status"] == "done"
    assert await app.get_result(done_id) == {"sent": True}
    assert await app.get_result(waiting) is None  # not done yet
    assert await app.get_job("00000000-0000-4000-8000-000000000000") is None
    assert await app.get_job("garbage") is None
    assert await app.get_result("garbage") is None

    assert await app.cancel_job(done_id) is False  # already finished
    assert await app.cancel_job(waiting) is True
    assert await app.cancel_job(waiting) is False
    assert await app.cancel_job("garbage") is False

    listed = await app.list_jobs()
    assert isinstance(listed, list) and [r["id"] for r in listed] == [waiting, done_id]
    assert [r["id"] for r in await app.list_jobs(status="cancelled")] == [waiting]
    assert [r["id"] for r in await app.list_jobs(queue="emails", limit=1, offset=1)] == [done_id]
    with pytest.raises(ValidationError, match="did you mean 'queued'"):
        await app.list_jobs(status="queud")
    with pytest.raises(ValidationError):
        await app.list_jobs(limit=0)

    assert await app.delete_job(done_id) is True
    assert await app.delete_job(done_id) is False
    assert await app.delete_job("garbage") is False
    assert await app.get_job(done_id) is None


async def test_queue_stats_shape_and_order(app: Soniq) -> None:
    register(app)
    assert await app.get_queue_stats() == []
    await app.enqueue("send_email", to="a", queue="zulu")
    await app.enqueue("send_email", to="b", queue="alpha")
    cancelled = await app.enqueue("send_email", to="c", queue="mike")
    await app.cancel_job(cancelled)
    stats = await app.get_queue_stats()
    assert [s["queue"] for s in stats] == ["alpha", "mike", "zulu"]
    for entry in stats:
        assert list(entry) == ["queue", "total", "waiting", "queued", "processing", "done",
                               "dead_letter", "cancelled"]
        assert all(isinstance(entry[k], int) for k in entry if k != "queue")  # type: ignore[literal-required]
    assert stats[1]["cancelled"] == 1 and stats[1]["total"] == 1


def test_no_env_leaks_into_tests() -> None:
    assert not any(key.startswith("SONIQ_") for key in os.environ)
