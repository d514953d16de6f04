"""Keeps the worker's row alive every ``heartbeat_interval`` and picks up cancel requests for its
running jobs (the polling path; PostgreSQL also pushes them through LISTEN). At start it also
writes the definitions of the jobs the worker registered (``backend.definitions``), and its row
lists their names (kept when a beat re-creates the row)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

import anyio

from soniq.backends.stores import JobDefinition
from soniq.errors import DatabaseError
from soniq.limits import limit_options
from soniq.runtime.rounds import Rounds
from soniq.uniqueness import rule_options

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anyio.abc import TaskStatus

    from soniq.backends.base import StorageBackend
    from soniq.registry import JobRegistry, JobSpec
    from soniq.runtime.executor import Executor
    from soniq.settings import SoniqSettings
    from soniq.types import WorkerInfo

__all__ = ["Heartbeat", "job_definition", "job_definitions"]

logger = logging.getLogger("soniq.worker")


def job_definition(spec: JobSpec, settings: SoniqSettings) -> JobDefinition:
    """What a worker stores for ``spec``: its options with this app's defaults filled in."""
    timeout = spec.timeout if spec.timeout is not None else settings.job_timeout
    delay = spec.retry_delay
    options: dict[str, Any] = {
        "unique": spec.unique, "retry_backoff": spec.retry_backoff,
        "retry_delay": list(delay) if isinstance(delay, tuple) else delay,
        "retry_max_delay": spec.retry_max_delay, **rule_options(spec.unique_rule),
        **limit_options(spec.concurrency_limit, spec.concurrency_key, spec.ordered,
                        spec.rate_limit, spec.rate_key),
    }
    return JobDefinition(
        name=spec.name, queue=spec.queue,
        priority=spec.priority if spec.priority is not None else settings.priority,
        max_attempts=1 + (spec.max_retries if spec.max_retries is not None
                          else settings.max_retries),
        timeout=timeout or None, encrypt=spec.encrypt, options=options)


def job_definitions(registry: JobRegistry, settings: SoniqSettings) -> list[JobDefinition]:
    return sorted((job_definition(spec, settings) for spec in registry), key=lambda d: d.name)


class Heartbeat:
    def __init__(self, backend: StorageBackend, executor: Executor, worker: WorkerInfo, *,
                 interval: float,
                 definitions: Callable[[], Sequence[JobDefinition]] = lambda: ()) -> None:
        self._backend = backend
        self._executor = executor
        self._worker = worker
        self._interval = interval
        self._definitions = definitions
        self._rounds = Rounds()  # a beat in flight finishes before stop() returns

    async def stop(self) -> None:
        """Beat no more (the worker is about to remove its row while this loop's task may
        still run: a later beat would re-create the row)."""
        await self._rounds.stop()

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Store the job definitions, then register the worker (so it exists before anything
        is claimed), then beat."""
        definitions = self._definitions()  # read at start: jobs registered until then count
        self._worker = dataclasses.replace(self._worker,
                                           job_names=tuple(d.name for d in definitions))
        # Definitions first: a live worker row never names a job whose definition is not stored.
        store = self._backend.definitions
        if store is not None and definitions:
            try:
                await store.upsert(definitions)
            except DatabaseError as exc:  # informative only: never keeps the worker from running
                logger.warning("could not store the job definitions of worker %s: %s",
                               self._worker.id, exc)
        await self._backend.register_worker(self._worker)
        task_status.started()
        while True:
            await anyio.sleep(self._interval)
            await self.tick()

    async def tick(self) -> None:
        async with self._rounds.round() as running:
            if not running:
                return
            try:
                cancels = await self._backend.heartbeat(self._worker.id,
                                                        job_names=self._worker.job_names)
            except DatabaseError as exc:
                logger.warning("heartbeat failed (will retry in %gs): %s", self._interval, exc)
                return
        for job_id in cancels:
            self._executor.request_cancel(job_id)
