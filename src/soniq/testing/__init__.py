"""Helpers for testing code that uses Soniq, for users and for Soniq's own tests.

::

    from soniq.testing import assert_enqueued, drain, testing_mode, wait_for_status

    async def test_signup(soniq_app):              # fixture from the pytest plugin
        await signup(soniq_app, "ada@example.com")
        await assert_enqueued(soniq_app, job=send_welcome, args={"email": "ada@example.com"})
        [ran] = await drain(soniq_app)             # run what is due, get what ran
        assert ran["status"] == "done"

- **manual mode** (the default): ``enqueue`` stores the job; ``await drain(app)`` runs it.
- **inline mode** (``with testing_mode(app, "inline"):`` or ``@pytest.mark.soniq(mode="inline")``):
  ``enqueue`` runs the job before it returns. The job still goes through storage, so its arguments
  make the same JSON round trip as in production: a value that JSON cannot hold fails in the
  test, and the job receives what a real worker would (a tuple arrives as a list).

Nothing here sleeps for a fixed time: waits poll with a deadline and fail with a message.
The pytest plugin (:mod:`soniq.testing.plugin`, loaded automatically) adds the ``soniq_app``
fixture and the ``soniq`` marker.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import anyio

from soniq.errors import SoniqError
from soniq.serialization import dumps, loads
from soniq.types import JobContext, JobRecord, JobStatus

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from soniq.app import Soniq

__all__ = [
    "InlineJobError",
    "assert_enqueued",
    "drain",
    "refute_enqueued",
    "testing_mode",
    "wait_for_status",
]

Mode = Literal["inline", "manual"]
_MODES = ("inline", "manual")
_PAGE = 500


class InlineJobError(SoniqError):
    """A job run by inline mode (with ``raise_errors=True``) failed; ``record`` is its state."""

    def __init__(self, record: JobRecord) -> None:
        self.record = record
        super().__init__(f"inline job {record['job_name']} ({record['id']}) failed: "
                         f"{record['last_error']}")


# -- running jobs -----------------------------------------------------------------------------------
async def drain(app: Soniq, *, queues: Sequence[str] | None = None, concurrency: int = 1,
                timeout: float = 30.0) -> list[JobRecord]:  # noqa: ASYNC109
    """Run every job that is due now (on ``queues``, default all) until none is left; return the
    jobs this call ran, in the order they started, as their records after the run.

    Jobs scheduled for later, and retries whose delay has not passed, stay queued. Fails with
    ``AssertionError`` if the jobs have not finished within ``timeout`` seconds.
    """
    worker = app.worker(concurrency=concurrency, queues=queues, run_once=True)
    ran: dict[str, None] = {}

    def seen(ctx: JobContext) -> None:
        if ctx.worker_id == worker.id:
            ran[ctx.job_id] = None

    app.hooks.before_job.append(seen)
    try:
        with anyio.fail_after(timeout):
            await worker.run()
    except TimeoutError:
        raise AssertionError(f"drain(): jobs still running after {timeout}s") from None
    finally:
        app.hooks.before_job.remove(seen)
    records = []
    for job_id in ran:
        record = await app.get_job(job_id)
        if record is not None:
            records.append(record)
    return records


async def wait_for_status(app: Soniq, job_id: str, *statuses: str | JobStatus,
                          timeout: float = 10.0) -> JobRecord:  # noqa: ASYNC109
    """Wait until the job is in one of ``statuses`` (default: any final one) and return its
    record; fails with ``AssertionError`` naming the last status seen after ``timeout`` seconds.

    For jobs that a worker runs elsewhere (``app.running_worker()``, another process).
    """
    wanted = {str(s) for s in statuses} or {"done", "dead_letter", "cancelled"}
    unknown = wanted - set(JobStatus._value2member_map_)
    if unknown:
        raise ValueError(f"unknown status(es) {sorted(unknown)}; use {', '.join(JobStatus)}")
    last: JobRecord | None = None
    interval = 0.005
    try:
        with anyio.fail_after(timeout):
            while True:
                last = await app.get_job(job_id)
                if last is not None and last["status"] in wanted:
                    return last
                await anyio.sleep(interval)
                interval = min(interval * 2, 0.1)
    except TimeoutError:
        seen = "no such job" if last is None else f"status {last['status']!r}"
        if last is not None and last["last_error"]:
            seen += f", last error {last['last_error']!r}"
        raise AssertionError(f"job {job_id} did not reach {' or '.join(sorted(wanted))} within "
                             f"{timeout}s ({seen})") from None


# -- modes --------------------------------------------------------------------------------------------
@contextmanager
def testing_mode(app: Soniq, mode: Mode, *,
                 raise_errors: bool = False) -> Iterator[Soniq]:  # noqa: PT028 -- not a test
    """Switch ``app`` to ``"inline"`` (``enqueue`` runs the job at once) or ``"manual"`` (jobs wait
    for :func:`drain`) for the body of the block.

    Inline mode runs what is due on the job's queue right after the insert, so a job scheduled for
    later stays queued, and a job enqueued with ``connection=`` runs only after that transaction
    commits (at the next ``drain``). With ``raise_errors=True`` a failed attempt raises
    :class:`InlineJobError` from ``enqueue``.
    """
    if mode not in _MODES:
        raise ValueError(f"unknown testing mode {mode!r}; use 'inline' or 'manual'")
    saved: dict[str, Any] = {name: app.__dict__[name] for name in ("enqueue", "enqueue_many")
                             if name in app.__dict__}
    if mode == "inline":
        _install_inline(app, raise_errors)
    else:
        for name in ("enqueue", "enqueue_many"):
            app.__dict__.pop(name, None)
    try:
        yield app
    finally:
        for name in ("enqueue", "enqueue_many"):
            app.__dict__.pop(name, None)
        app.__dict__.update(saved)


def _install_inline(app: Soniq, raise_errors: bool) -> None:
    # Bound methods of the class: the ones a nested testing_mode would otherwise wrap again.
    enqueue = type(app).enqueue.__get__(app)
    enqueue_many = type(app).enqueue_many.__get__(app)

    async def run_now(job_ids: Sequence[str]) -> None:
        queues = set()
        for job_id in job_ids:
            record = await app.get_job(job_id)
            if record is not None and record["status"] == JobStatus.QUEUED:
                queues.add(record["queue"])
        if queues:
            await app.worker(queues=sorted(queues), run_once=True, concurrency=1).run()
        if raise_errors:
            for job_id in job_ids:
                record = await app.get_job(job_id)
                if record is not None and record["errors"]:
                    raise InlineJobError(record)

    async def inline_enqueue(target: Any, **kwargs: Any) -> str:
        job_id: str = await enqueue(target, **kwargs)
        if kwargs.get("connection") is None:
            await run_now([job_id])
        return job_id

    async def inline_enqueue_many(target: Any, args_list: Sequence[Mapping[str, Any]],
                                  **kwargs: Any) -> list[str]:
        job_ids: list[str] = await enqueue_many(target, args_list, **kwargs)
        if kwargs.get("connection") is None:
            await run_now(job_ids)
        return job_ids

    app.__dict__["enqueue"] = inline_enqueue
    app.__dict__["enqueue_many"] = inline_enqueue_many


# -- assertions -----------------------------------------------------------------------------------------
async def assert_enqueued(app: Soniq, job: Callable[..., Any] | str | None = None, *,
                          args: Mapping[str, Any] | None = None, queue: str | None = None,
                          status: str | JobStatus | None = None,
                          count: int | None = None) -> list[JobRecord]:
    """Assert that stored jobs match (any status unless ``status`` is given) and return them.

    ``job`` is a registered function or a job name; ``args`` matches when every given argument
    equals the stored one after a JSON round trip (other arguments may differ); ``count`` asks
    for exactly that many matches instead of at least one.
    """
    matches, others = await _matching(app, job, args, queue, status)
    wanted = _describe(app, job, args, queue, status)
    if count is None and not matches:
        raise AssertionError(f"expected a job {wanted}, found none; stored jobs: "
                             f"{_summary(others) or 'none'}")
    if count is not None and len(matches) != count:
        raise AssertionError(f"expected {count} job(s) {wanted}, found {len(matches)}: "
                             f"{_summary(matches)}")
    return matches


async def refute_enqueued(app: Soniq, job: Callable[..., Any] | str | None = None, *,
                          args: Mapping[str, Any] | None = None, queue: str | None = None,
                          status: str | JobStatus | None = None) -> None:
    """Assert that no stored job matches (see :func:`assert_enqueued` for the filters)."""
    matches, _ = await _matching(app, job, args, queue, status)
    if matches:
        raise AssertionError(f"expected no job {_describe(app, job, args, queue, status)}, "
                             f"found {len(matches)}: {_summary(matches)}")


def _job_name(app: Soniq, job: Callable[..., Any] | str | None) -> str | None:
    if job is None or isinstance(job, str):
        return job
    spec = app.registry.spec_for(job)
    if spec is None:
        raise ValueError(f"{getattr(job, '__qualname__', job)!r} is not registered on this app")
    return spec.name


async def _matching(app: Soniq, job: Callable[..., Any] | str | None,
                    args: Mapping[str, Any] | None, queue: str | None,
                    status: str | JobStatus | None) -> tuple[list[JobRecord], list[JobRecord]]:
    name = _job_name(app, job)
    expected = loads(dumps(dict(args), what="expected args")) if args is not None else None
    matches: list[JobRecord] = []
    others: list[JobRecord] = []
    offset = 0
    while True:
        page = await app.list_jobs(queue=queue, status=None if status is None else str(status),
                                   limit=_PAGE, offset=offset)
        for record in page:
            stored = _stored_args(app, record)
            ok = (name is None or record["job_name"] == name) and (
                expected is None or all(k in stored and stored[k] == v for k, v in expected.items()))
            (matches if ok else others).append(record)
        if len(page) < _PAGE:
            break
        offset += _PAGE
    matches.reverse()  # list_jobs is newest first; report in enqueue order
    others.reverse()
    return matches, others


def _stored_args(app: Soniq, record: JobRecord) -> dict[str, Any]:
    stored = record["args"]
    if isinstance(stored, dict):
        return stored
    return {}  # encrypted arguments: only the job name and queue can match


def _describe(app: Soniq, job: Callable[..., Any] | str | None, args: Mapping[str, Any] | None,
              queue: str | None, status: str | JobStatus | None) -> str:
    parts = [f"{label}={value!r}" for label, value in
             (("job", _job_name(app, job)), ("args", None if args is None else dict(args)),
              ("queue", queue), ("status", None if status is None else str(status)))
             if value is not None]
    return f"with {', '.join(parts)}" if parts else "at all"


def _summary(records: Sequence[JobRecord], limit: int = 10) -> str:
    shown = ", ".join(f"{r['job_name']}({r['args']!r}, queue={r['queue']!r}, "
                      f"status={r['status']!r})" for r in records[:limit])
    return shown + (f", ... ({len(records) - limit} more)" if len(records) > limit else "")


testing_mode.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test to collect
