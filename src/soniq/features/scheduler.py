"""Recurring jobs: ``app.scheduler`` (add, pause, resume, remove, list) and ``@app.periodic``.

Schedules live in storage (:class:`~soniq.backends.stores.ScheduleStore`, ``backend.schedules``),
never in a per-process cache: every worker runs a :class:`SchedulerService` in its task group, and
each tick it reads the due schedules afresh, so a pause or removal made by any process is seen on
the next tick. Firing is one transaction per fire time -- compare-and-swap on the schedule's
``next_run_at``, a row in ``soniq_schedule_fires`` (unique per schedule and fire time) and the job
-- so any number of workers enqueue each fire time exactly once.

A scheduler fires only the schedules whose job its app can enqueue (registered there, or any name
with ``enqueue_validation='none'``): the due query filters by those job names, so schedules of
another service sharing the database, or of a renamed job, never hold back the others. They are
left untouched for workers that know the job, and named once in a warning per scheduler.

Timing (:mod:`soniq.features.schedule_timing`):

- ``every=`` fire times sit on a fixed grid (``first + k * every``), so they never drift with the
  tick; the first one is ``every`` after the schedule is added.
- ``cron=`` is evaluated with croniter on the wall clock of the schedule's ``timezone``. Across a
  daylight-saving change a wall-clock time that does not exist (spring forward) is skipped, and
  one that happens twice (fall back) fires once, at its first occurrence.
- Misfires (``scheduler_misfire``): a fire time older than ``scheduler_misfire_grace`` (at least
  two ticks) counts as missed, e.g. after downtime. ``"skip"`` drops missed times and fires only
  the latest time still within the grace period, else waits for the next future time;
  ``"catch_up_once"`` fires one job for all the missed times (its fire time is the first one
  missed), then continues with the next future time.

Use it as ``app.scheduler``::

    await app.scheduler.add("reports.daily", cron="0 7 * * 1-5", timezone="Europe/Berlin")
    await app.scheduler.pause("reports.daily")

or declare schedules in code with ``@app.periodic(cron=..., name=...)``: the definitions are written
to storage when a worker's scheduler starts (or on ``await app.scheduler.sync()``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from soniq.backends.stores import ScheduleDefinition, ScheduleRecord, ScheduleStore
from soniq.errors import (
    ConfigurationError,
    DatabaseError,
    UnsupportedOperationError,
    ValidationError,
)
from soniq.features.schedule_timing import Misfire, Timing
from soniq.registry import validate_name
from soniq.serialization import dumps, loads, utc_now

if TYPE_CHECKING:
    import builtins
    from collections.abc import Awaitable, Callable, Collection, Mapping

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.types import NewJob

__all__ = ["Scheduler", "SchedulerService", "Timing", "run_scheduler"]

logger = logging.getLogger("soniq.scheduler")

#: Due schedules handled per tick (the rest wait for the next tick).
DUE_BATCH = 100
#: How often a scheduler looks for schedules whose job it cannot enqueue, to warn about new ones.
UNKNOWN_CHECK_INTERVAL = timedelta(minutes=10)
#: Schedules named in that warning (the rest are counted; ``soniq schedules list`` shows all).
_NAMED = 20


async def _nothing() -> None:
    """The default ``ready``: a backend used directly is already initialised by its owner."""


def _any_job() -> None:
    """The default ``job_names``: ``build_job`` decides alone which jobs it can enqueue."""


# -- the public API -------------------------------------------------------------------------------
class Scheduler:
    """Recurring jobs stored in the app's database.

    Args:
        backend: the storage backend; it must offer ``schedules``
            (a :class:`~soniq.backends.stores.ScheduleStore`).
        build_job: ``(target, args, queue, priority) -> NewJob``, the app's enqueue validation
            (registration, arguments, queue, priority); nothing is written by it.
        ready: awaited before every storage call (the app passes ``ensure_initialized``).
        job_names: the job names ``build_job`` can enqueue, or None for any name (the app passes
            its registered jobs, or None with ``enqueue_validation='none'``). Schedules of other
            jobs (another service's, a renamed job) are never fired, changed or deleted here.
        wake: called with the queues that got jobs, to wake in-process workers at once.
        interval, misfire, grace: the ``scheduler_*`` settings.
        clock: what "now" is (tests set ``scheduler.clock`` to a fixed time).

    Construction touches nothing; every method validates its input before any I/O.
    """

    def __init__(self, backend: StorageBackend, *,
                 build_job: Callable[[Any, Mapping[str, Any], str | None, int | None], NewJob],
                 ready: Callable[[], Awaitable[None]] = _nothing,
                 job_names: Callable[[], Collection[str] | None] = _any_job,
                 wake: Callable[[set[str]], None] | None = None,
                 interval: float = 1.0, misfire: Misfire = "skip", grace: float = 60.0,
                 error_retry_delay: float = 5.0,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self._backend = backend
        self._build_job = build_job
        self._ready = ready
        self._job_names = job_names
        self._wake = wake
        self.interval = interval
        self.misfire: Misfire = misfire
        # A fire time is on time for at least two ticks, whatever the setting says.
        self.grace = timedelta(seconds=max(grace, 2 * interval))
        self.error_retry_delay = error_retry_delay
        self.clock = clock
        self._definitions: dict[str, tuple[ScheduleDefinition, Timing]] = {}

    def __repr__(self) -> str:
        return f"<Scheduler backend={self._backend.name} periodic={len(self._definitions)}>"

    @property
    def supported(self) -> bool:
        """Whether the backend offers a schedule store (``backend.schedules``)."""
        return self._backend.schedules is not None

    async def _store(self) -> ScheduleStore:
        store = self._backend.schedules
        if store is None:
            raise UnsupportedOperationError(
                f"the {self._backend.name} backend has no schedule store (backend.schedules); "
                "use the memory, sqlite or postgres backend, or implement ScheduleStore"
            )
        await self._ready()
        return store

    def _definition(self, name: str, *, cron: object, every: object, target: Any,
                    args: Mapping[str, Any] | None, queue: str | None, priority: int | None,
                    timezone: object) -> tuple[ScheduleDefinition, Timing]:
        """Validate everything about a schedule (no I/O)."""
        validate_name(name, "schedule name")
        timing = Timing.parse(cron, every, timezone)
        job_args = {} if args is None else args
        if not isinstance(job_args, dict):
            raise ValidationError(f"args must be a dict of keyword arguments, "
                                  f"not {type(job_args).__name__}")
        # The enqueue path validates target, arguments, queue and priority; arguments are stored
        # as given (plain JSON) and validated again, and encoded, at each fire.
        job = self._build_job(name if target is None else target, job_args, queue, priority)
        definition = ScheduleDefinition(
            name=name, job_name=job.job_name, cron=timing.cron, every_seconds=timing.every,
            timezone=timing.timezone, queue=queue, priority=priority,
            args=dumps(job_args, what=f"the arguments of schedule {name!r}"),
        )
        return definition, timing

    async def add(self, name: str, *, cron: str | None = None,
                  every: float | timedelta | None = None, target: Any = None,
                  args: Mapping[str, Any] | None = None, queue: str | None = None,
                  priority: int | None = None, timezone: str = "UTC") -> dict[str, Any]:
        """Add or replace the schedule ``name`` and return it (see :meth:`get`).

        Exactly one of ``cron`` (a croniter expression, read in ``timezone``) or ``every``
        (seconds >= 1, or a timedelta). ``target`` is a registered function or job name; without
        it ``name`` is the job name. ``queue``/``priority`` default to the job's. Replacing keeps
        ``paused`` and ``last_run_at``, and keeps ``next_run_at`` unless the timing changed.
        """
        definition, timing = self._definition(name, cron=cron, every=every, target=target,
                                              args=args, queue=queue, priority=priority,
                                              timezone=timezone)
        store = await self._store()
        now = self.clock()
        record = await store.upsert(definition, next_run_at=timing.next_after(now), now=now)
        return _public(record, job_known=self.knows(record.job_name))

    def define(self, name: str, *, cron: object = None, every: object = None,
               target: Any = None, args: Mapping[str, Any] | None = None,
               timezone: object = "UTC") -> None:
        """Record a schedule declared in code (``@app.periodic``); :meth:`sync` writes it."""
        self._definitions[name] = self._definition(name, cron=cron, every=every, target=target,
                                                   args=args, queue=None, priority=None,
                                                   timezone=timezone)

    @property
    def definitions(self) -> builtins.list[str]:
        """Names of the schedules declared in code on this app."""
        return sorted(self._definitions)

    async def sync(self, *, now: datetime | None = None) -> int:
        """Write every ``@app.periodic`` definition to storage (upsert); how many."""
        if not self._definitions:
            return 0
        store = await self._store()
        now = now or self.clock()
        for definition, timing in self._definitions.values():
            await store.upsert(definition, next_run_at=timing.next_after(now), now=now)
        return len(self._definitions)

    async def remove(self, name: str) -> bool:
        """Delete the schedule; False when there was none. Jobs already enqueued stay. A schedule
        declared with ``@app.periodic`` comes back at the next sync while the code declares it:
        pause it instead, or delete the decorator."""
        if not _is_name(name):
            return False
        store = await self._store()
        return await store.delete(name)

    async def pause(self, name: str) -> bool:
        """Stop firing (every worker sees it on its next tick); False when there is no such
        schedule. Fire times passed while paused are misfires when it is resumed."""
        return await self._set_paused(name, True)

    async def resume(self, name: str) -> bool:
        """Fire again; False when there is no such schedule."""
        return await self._set_paused(name, False)

    async def _set_paused(self, name: str, paused: bool) -> bool:
        if not _is_name(name):
            return False
        store = await self._store()
        return await store.set_paused(name, paused, now=self.clock())

    async def get(self, name: str) -> dict[str, Any] | None:
        """The schedule as a dict (``name, job_name, cron, every, timezone, queue, priority,
        args, paused, next_run_at, last_run_at, created_at, updated_at, job_known``), or None.
        ``job_known`` is False when this app cannot enqueue the job (it is not registered here):
        this app's scheduler leaves the schedule to workers that register it."""
        if not _is_name(name):
            return None
        store = await self._store()
        record = await store.get(name)
        return None if record is None else _public(record, job_known=self.knows(record.job_name))

    def knows(self, job_name: str) -> bool:
        """Whether this app's scheduler can enqueue ``job_name`` (fires its schedules)."""
        names = self._job_names()
        return names is None or job_name in names

    def service(self) -> SchedulerService:
        """A new loop that fires due schedules (what every worker runs)."""
        return SchedulerService(self)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Run the scheduler alone, without a worker, until cancelled."""
        await SchedulerService(self).run(task_status=task_status)

    async def list(self) -> builtins.list[dict[str, Any]]:
        """Every schedule, by name (see :meth:`get` for the keys)."""
        store = await self._store()
        names = self._job_names()
        return [_public(record, job_known=names is None or record.job_name in names)
                for record in await store.list()]


def _public(record: ScheduleRecord, *, job_known: bool) -> dict[str, Any]:
    return {
        "name": record.name,
        "job_name": record.job_name,
        "cron": record.cron,
        "every": record.every_seconds,
        "timezone": record.timezone,
        "queue": record.queue,
        "priority": record.priority,
        "args": loads(record.args),
        "paused": record.paused,
        "next_run_at": record.next_run_at,
        "last_run_at": record.last_run_at,
        "created_at": record.created_at,
        "updated_at": record.updated_at,
        "job_known": job_known,
    }


def _is_name(name: object) -> bool:
    try:
        validate_name(name, "schedule name")
    except ValidationError:
        return False
    return True


# -- firing ---------------------------------------------------------------------------------------
class SchedulerService:
    """The loop every worker runs (a runtime ``Service``): each ``scheduler_interval`` it fires
    the due schedules. :meth:`tick` is one turn of the loop, with an injectable ``now``."""

    name = "scheduler"

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._synced_definitions = -1
        self._warned: set[str] = set()  # schedules whose job this process cannot build
        # Due schedules this process declined to fire (their arguments or timing fail here), by
        # (name, next_run_at): later ticks read past them, so they never fill the due batch.
        self._declined: set[tuple[str, datetime]] = set()
        self._next_unknown_check: datetime | None = None

    def __repr__(self) -> str:
        return f"<SchedulerService interval={self._scheduler.interval:g}s>"

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Tick until cancelled. Database errors are logged and retried after
        ``error_retry_delay``; anything else is a bug and propagates. On a backend without a
        schedule store it does nothing (there can be no schedules to fire)."""
        task_status.started()
        if not self._scheduler.supported:
            logger.debug("the %s backend has no schedule store; the scheduler stays idle",
                         self._scheduler._backend.name)
            await anyio.sleep_forever()
        while True:
            try:
                await self.tick()
            except DatabaseError as exc:
                logger.warning("scheduler tick failed (%s); retrying in %gs", exc,
                               self._scheduler.error_retry_delay)
                await anyio.sleep(self._scheduler.error_retry_delay)
                continue
            await anyio.sleep(self._scheduler.interval)

    async def tick(self, *, now: datetime | None = None) -> builtins.list[str]:
        """One tick: sync ``@periodic`` definitions (first tick only), then fire every due
        schedule. Returns the ids of the jobs this call enqueued."""
        scheduler = self._scheduler
        now = now or scheduler.clock()
        if self._synced_definitions != len(scheduler.definitions):
            await scheduler.sync(now=now)
            self._synced_definitions = len(scheduler.definitions)
        store = await scheduler._store()
        job_names = scheduler._job_names()
        if self._next_unknown_check is None or now >= self._next_unknown_check:
            await self._warn_unknown(store, job_names)
            self._next_unknown_check = now + UNKNOWN_CHECK_INTERVAL
        fired: list[str] = []
        woken: set[str] = set()
        seen: set[tuple[str, datetime]] = set()
        while True:  # again only when this round declined some of a full batch
            declined = len(self._declined)
            limit = DUE_BATCH + declined
            due = await store.due(now, limit=limit, job_names=job_names)
            seen.update((r.name, r.next_run_at) for r in due)
            for record in due:
                if (record.name, record.next_run_at) not in self._declined:
                    outcome = await self._fire(store, record, now)
                    if outcome is not None:
                        fired.append(outcome[0])
                        woken.add(outcome[1])
            if len(due) < limit or len(self._declined) == declined:
                break
        self._declined &= seen  # forget schedules edited, fired elsewhere or deleted
        if woken and scheduler._wake is not None:
            scheduler._wake(woken)
        return fired

    async def _warn_unknown(self, store: ScheduleStore, job_names: Collection[str] | None) -> None:
        """Warn once per schedule whose job this app cannot enqueue (another service's, or a
        renamed job). The due query leaves them out, so they never hold back the others, and
        they are neither fired nor changed here."""
        if job_names is None:
            return
        unknown = [record for record in await store.list()
                   if record.job_name not in job_names and record.name not in self._warned]
        if not unknown:
            return
        self._warned.update(record.name for record in unknown)
        named = ", ".join(f"{r.name!r} (job {r.job_name!r})" for r in unknown[:_NAMED])
        more = f" and {len(unknown) - _NAMED} more" if len(unknown) > _NAMED else ""
        logger.warning(
            "%d schedule(s) name a job that is not registered on this app (another service's, "
            "or a renamed job): this scheduler leaves them to workers that register it: %s%s "
            "(see: soniq schedules list)", len(unknown), named, more)

    async def _fire(self, store: ScheduleStore, record: ScheduleRecord,
                    now: datetime) -> tuple[str, str] | None:
        scheduler = self._scheduler
        timing = Timing(record.cron, record.every_seconds, record.timezone)
        try:
            fire_at, upcoming = timing.plan(record.next_run_at, now, misfire=scheduler.misfire,
                                            grace=scheduler.grace)
        except ValidationError as exc:
            logger.error("schedule %r cannot be evaluated: %s", record.name, exc)
            self._declined.add((record.name, record.next_run_at))
            return None
        if fire_at is None:
            await store.advance(record.name, expected=record.next_run_at, next_run_at=upcoming,
                                now=now)
            logger.info("schedule %r skipped missed fire times up to %s (misfire policy 'skip')",
                        record.name, now.isoformat())
            return None
        try:
            job = scheduler._build_job(record.job_name, loads(record.args), record.queue,
                                       record.priority)
        except (ValidationError, ConfigurationError) as exc:
            # Another worker that knows the job may fire it; say so once per schedule.
            if record.name not in self._warned:
                self._warned.add(record.name)
                logger.warning("schedule %r cannot enqueue job %r here: %s", record.name,
                               record.job_name, exc)
            self._declined.add((record.name, record.next_run_at))
            return None
        job_id = await store.fire(record.name, fire_at=fire_at, job=job,
                                  expected=record.next_run_at, next_run_at=upcoming, now=now)
        self._warned.discard(record.name)
        if job_id is None:
            return None
        logger.debug("schedule %r fired job %s for %s", record.name, job_id, fire_at.isoformat())
        return job_id, job.queue


class _HasScheduler(Protocol):
    @property
    def scheduler(self) -> Scheduler: ...


async def run_scheduler(app: _HasScheduler) -> None:
    """Run only the scheduler of ``app`` (no worker) until cancelled: what ``soniq scheduler``
    will run. Workers run it too, so this is for deployments that keep firing apart."""
    await app.scheduler.run()
