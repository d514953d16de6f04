"""Claims jobs in batches and runs each in a child task, never more at once than ``concurrency``.
A runner task runs job after job; with none waiting it parks until the next claim hands it one,
so tasks are made per slot, not per job (a task costs more than a no-op job).

It claims again as soon as a slot frees or a notification arrives, and otherwise every
``poll_interval``. To keep slots busy while a claim is on its way, it claims *ahead*: as many extra
jobs as the worker finishes during about two claim round trips (measured as it goes, capped at
``concurrency``), held in a local queue until a slot frees. Short jobs therefore never wait for a
round trip; slow jobs make the look-ahead ~0, so a worker does not hoard jobs another worker could
start. While it claims rate-limited work it also polls as often as its fastest bucket earns a
token (nothing announces a refill). ``stop()`` ends claiming and gives the look-ahead back at once (without using an attempt);
running jobs then get ``shutdown_timeout`` seconds to finish before they are cancelled (and given
back the same way).

It also keeps the queue settings as it last read them (``backend.queues``): loaded before the
first claim, again every ``poll_interval`` and as soon as :meth:`settings_changed` says a queue
setting changed (the listener's ``soniq_queues`` notification). The claim excludes paused queues
and enforces limits by itself, so this view never decides what is claimed; it is passed to
``claim_jobs(paused=..., limited=...)`` so that the backend can pick a claim that does not walk
a paused queue's backlog and knows which gated queues to try. The rate-limited jobs this worker
registered go along as ``rates``.

Rolling deploys: a claimed job whose name this worker did not register is never run nor
dead-lettered here. It is given back at once with its attempt refunded (:meth:`Executor.leave`),
its name joins :attr:`Fetcher.unknown`, and every later claim excludes those names
(``claim_jobs(unknown=...)``, one bind parameter): so each name costs a worker one give-back,
not a spin. The jobs wait for a worker that registered the name; the cleanup dead-letters them
only when none has for ``unknown_job_grace`` (:mod:`.cleanup`).
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import TYPE_CHECKING

import anyio

from soniq.errors import DatabaseError
from soniq.limits import parse_rate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from soniq.backends.base import StorageBackend
    from soniq.limits import Rate, RateGate
    from soniq.runtime.executor import Executor
    from soniq.types import ClaimedJob

__all__ = ["Fetcher"]

logger = logging.getLogger("soniq.worker")

#: The shortest wait for a bucket's next token (a fast rate does not make a busy poll).
MIN_TOKEN_WAIT = 0.005
#: The shortest rest of the gated claims after one that took nothing: a worker that serves a
#: gated queue or registered a rate-limited job does not pay their round trips (a transaction,
#: for queues) on every claim of its other work. Limited work waits at most a token's time (or
#: this) to be noticed; its limits are untouched.
GATE_REST = 0.05


class Fetcher:
    def __init__(self, backend: StorageBackend, executor: Executor, *, worker_id: str,
                 queues: Sequence[str] | None, concurrency: int, poll_interval: float,
                 shutdown_timeout: float, error_retry_delay: float, run_once: bool,
                 flush: Callable[[], Awaitable[None]], rates: Sequence[RateGate] = ()) -> None:
        self._backend = backend
        self._executor = executor
        self._worker_id = worker_id
        self._queues = list(queues) if queues is not None else None
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._shutdown_timeout = shutdown_timeout
        self._error_retry_delay = error_retry_delay
        self._run_once = run_once
        self._flush = flush
        self._wake = anyio.Event()
        self._idle = anyio.Event()
        self._stopping = False
        self._waiting: deque[ClaimedJob] = deque()  # claimed ahead, waiting for a slot
        self._executing = 0
        self._parked: list[_Parked] = []  # runners with no job, newest last
        self._start: Callable[..., object] | None = None
        self._pace = Pace()
        # As last read; which claims to try (the claim itself reads the stored settings).
        self.paused: frozenset[str] = frozenset()
        self.limited: frozenset[str] = frozenset()
        self._rates = tuple(rates)
        self._rated = frozenset(gate.job_name for gate in rates)
        self._queue_rates: list[Rate] = []  # of the gated queues, as last read
        self._gated_at = -math.inf  # when a claim last returned rate-limited or gated work
        self._gates_rest_until = -math.inf  # the gated claims rest until then
        self._settings_read_at = -math.inf
        #: The job names this worker claimed and did not register: never claimed again.
        self.unknown: frozenset[str] = frozenset()
        executor.on_slot_freed = self.wake

    def wake(self) -> None:
        """Claim again now (a job was enqueued, a slot freed, or a listener reconnected)."""
        self._wake.set()

    def wake_for(self, queue: str) -> None:
        if self._queues is None or queue in self._queues:
            self._wake.set()

    def settings_changed(self) -> None:
        """A queue's setting changed: read them again before the next claim, and claim now (a
        resumed queue has jobs to take)."""
        self._settings_read_at = -math.inf
        self._wake.set()

    async def _read_settings(self) -> None:
        """Reload the queue settings when a change was announced or ``poll_interval`` passed."""
        store = self._backend.queues
        now = anyio.current_time()
        if store is None or now < self._settings_read_at + self._poll_interval:
            return
        self._settings_read_at = now
        try:
            settings = await store.list()
        except DatabaseError as exc:  # the claim still reads the settings by itself
            logger.warning("reading the queue settings failed (keeping the last ones): %s", exc)
            return
        self.paused = frozenset(setting.name for setting in settings if setting.paused)
        self.limited = frozenset(setting.name for setting in settings if setting.gated)
        self._queue_rates = [rate for setting in settings if setting.gated
                             if (rate := parse_rate(setting.rate_limit)) is not None]

    def _next_poll(self) -> float:
        """How long to wait for the next claim when nothing wakes this worker: ``poll_interval``,
        or -- while rate-limited work was claimed within the last ``poll_interval`` -- the time
        its fastest bucket takes to earn a token (a bucket refills with no notification)."""
        if anyio.current_time() - self._gated_at >= self._poll_interval:
            return self._poll_interval
        return self._token_wait(MIN_TOKEN_WAIT)

    def _token_wait(self, shortest: float) -> float:
        """The time the fastest bucket (of its jobs and gated queues) takes to earn a token,
        at least ``shortest``, at most ``poll_interval``."""
        rates = [*(gate.rate for gate in self._rates), *self._queue_rates]
        return min(self._poll_interval,
                   max(shortest, min((r.seconds / r.count for r in rates), default=shortest)))

    def stop(self) -> None:
        """Stop claiming and give the look-ahead back; running jobs finish within
        ``shutdown_timeout``."""
        self._stopping = True
        while self._waiting:
            self._executor.give_back(self._waiting.popleft())
        for parked in self._parked:
            parked.handed.set()
        self._parked.clear()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def free_slots(self) -> int:
        """Slots with no job in them (a stuck thread holds its slot)."""
        return self._concurrency - self._executing - self._executor.stuck

    def _room(self) -> int:
        """How many jobs to claim now: the free slots plus the look-ahead, minus what waits."""
        return self.free_slots + self._pace.lookahead(self._concurrency) - len(self._waiting)

    async def run(self) -> None:
        """Claim and run until stopped (or, with ``run_once``, until nothing is due)."""
        try:
            await self._run()
        finally:  # cancelled from outside: the look-ahead goes back too
            while self._waiting:
                self._executor.give_back(self._waiting.popleft())

    async def _run(self) -> None:
        async with anyio.create_task_group() as jobs:
            self._start = jobs.start_soon
            while not self._stopping:
                self._start_waiting()  # a stuck thread may have returned its slot
                room = self._room()
                if room <= 0:
                    self._wake = anyio.Event()
                    if self._room() <= 0:  # no await since the check: no wake-up is lost
                        await self._wait(math.inf)
                    continue
                self._wake = anyio.Event()
                claimed = await self.tick(room)
                if claimed is None:
                    continue
                if self._run_once and not claimed and not self._executor.running:
                    await self._flush()  # retries due now count as "due": look once more
                    if not await self.tick(self._room()):
                        break
                    continue
                if len(claimed) < room:
                    await self._wait(math.inf if self._run_once else self._next_poll())
            if self._executor.running:
                logger.info("waiting up to %gs for %d running job(s) to finish",
                            self._shutdown_timeout, len(self._executor.running))
                with anyio.move_on_after(self._shutdown_timeout):
                    while self._executor.running:
                        self._idle = anyio.Event()
                        await self._idle.wait()
            if self._executor.running:
                logger.warning("shutdown timeout: giving %d running job(s) back to the queue",
                               len(self._executor.running))
            jobs.cancel_scope.cancel()

    async def tick(self, limit: int) -> list[ClaimedJob] | None:
        """Claim up to ``limit`` jobs and start them (or queue them for the next free slot); None
        after a database error (logged). Needs :meth:`run`'s task group."""
        await self._read_settings()
        started = anyio.current_time()
        gates = (self._rated or self.limited) and started >= self._gates_rest_until
        try:
            if gates or not (self._rated or self.limited):
                claimed = await self._backend.claim_jobs(
                    self._worker_id, self._queues, limit, paused=self.paused,
                    limited=self.limited, rates=self._rates, unknown=self.unknown)
            else:  # resting: the plain claim alone (still not walking the gated queues)
                claimed = await self._backend.claim_jobs(
                    self._worker_id, self._queues, limit, paused=self.paused | self.limited,
                    unknown=self.unknown)
        except DatabaseError as exc:
            logger.warning("claiming jobs failed, retrying in %gs: %s", self._error_retry_delay, exc)
            await self._wait(self._error_retry_delay)
            return None
        now = anyio.current_time()
        self._pace.claimed(now, round_trip=now - started, full=len(claimed) == limit)
        if not all(self._executor.knows(job.job_name) for job in claimed):
            claimed = self._leave_unknown(claimed)
        if gates:
            if any(job.job_name in self._rated or job.queue in self.limited for job in claimed):
                self._gated_at = now
            else:  # nothing limited could start: rest the gated claims a moment
                self._gates_rest_until = now + self._token_wait(GATE_REST)
        for job in claimed:
            self._executor.admit(job)
        if self._stopping:  # stop() came during the claim
            for job in claimed:
                self._executor.give_back(job)
        else:
            self._waiting.extend(claimed)
            self._start_waiting()
        return claimed

    def _leave_unknown(self, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
        """Give back the claimed jobs of names this worker did not register (attempt refunded)
        and exclude those names from its claims from now on; claim again at once. Returns the
        rest."""
        met = {job.job_name for job in claimed if not self._executor.knows(job.job_name)}
        for name in sorted(met - self.unknown):
            logger.warning("job %r is not registered on this worker: its jobs are left for the "
                           "workers that register it (dead-lettered after unknown_job_grace if "
                           "none does)", name)
        self.unknown |= met
        for job in claimed:
            if job.job_name in met:
                self._executor.leave(job)
        self._wake.set()
        return [job for job in claimed if job.job_name not in met]

    def _start_waiting(self) -> None:
        """Hand waiting jobs to free slots: to a parked runner, else to a new one."""
        assert self._start is not None
        while self._waiting and self.free_slots > 0:
            self._executing += 1
            job = self._waiting.popleft()
            if self._parked:
                self._parked.pop().hand(job)
            else:
                self._start(self._runner, job)

    async def _runner(self, job: ClaimedJob) -> None:
        """Run ``job``, then the next waiting ones; with none waiting, park until a claim hands
        it one. Runners live as long as there is work (a task costs more than a job), at most
        one per free slot."""
        while True:
            try:
                await self._executor.run(job)
            finally:
                self._executing -= 1
                self._pace.finished += 1
                self._wake.set()
                self._idle.set()
            if self._stopping or self.free_slots <= 0:  # a stuck thread keeps this slot
                return
            if self._waiting:
                self._executing += 1
                job = self._waiting.popleft()
                continue
            parked = _Parked()
            self._parked.append(parked)
            try:
                await parked.handed.wait()
            except BaseException:  # cancelled while parked
                if parked.job is not None:
                    self._executing -= 1
                    self._executor.give_back(parked.job)
                elif parked in self._parked:
                    self._parked.remove(parked)
                raise
            if parked.job is None:  # stopped
                return
            job = parked.job

    async def _wait(self, seconds: float) -> None:
        with anyio.move_on_after(seconds):
            await self._wake.wait()


class _Parked:
    """A runner waiting for its next job."""

    __slots__ = ("handed", "job")

    def __init__(self) -> None:
        self.handed = anyio.Event()
        self.job: ClaimedJob | None = None

    def hand(self, job: ClaimedJob) -> None:
        self.job = job
        self.handed.set()


class Pace:
    """How fast jobs finish and how long a claim takes (moving averages), which size the
    look-ahead: the jobs likely to finish during two claim round trips."""

    def __init__(self) -> None:
        self.finished = 0
        self._seen = 0
        self._since = 0.0
        self._rate = 0.0  # jobs finished per second
        self._round_trip = 0.0  # seconds per claim

    def claimed(self, now: float, *, round_trip: float, full: bool) -> None:
        """A claim came back at ``now`` after ``round_trip`` seconds, with all it asked for."""
        if full and self._since:  # an emptying queue says nothing about the pace
            elapsed = now - self._since
            if elapsed > 0:
                rate = (self.finished - self._seen) / elapsed
                self._rate = rate if not self._rate else 0.8 * self._rate + 0.2 * rate
        self._round_trip = round_trip if not self._round_trip else (
            0.8 * self._round_trip + 0.2 * round_trip)
        self._seen, self._since = self.finished, now

    def lookahead(self, concurrency: int) -> int:
        return min(concurrency, int(self._rate * self._round_trip * 2))
