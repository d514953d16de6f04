"""What every adapter's dependencies share (``StorageBackend.insert_jobs``, the fan-in
protocol): which ids an insert must find stored, the error when some are missing, and the
statuses that end a job for its dependents."""

from __future__ import annotations

from graphlib import TopologicalSorter
from typing import TYPE_CHECKING

from soniq.errors import ValidationError
from soniq.types import JobStatus

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping, Sequence

    from soniq.types import NewJob

__all__ = ["ENDED", "check_found", "edges_of", "failure_policy", "ordered",
           "stored_dependencies"]

#: The statuses that end a job for its dependents (``done``: success; the others: failure).
ENDED = frozenset({JobStatus.DONE.value, JobStatus.DEAD_LETTER.value, JobStatus.CANCELLED.value})


def stored_dependencies(jobs: Sequence[NewJob]) -> list[str]:
    """The dependencies of ``jobs`` that are not jobs of the same insert (they must be stored),
    each once, in first-seen order."""
    own = {job.id for job in jobs}
    return list(dict.fromkeys(dep for job in jobs for dep in job.depends_on if dep not in own))


def check_found(wanted: Sequence[str], found: Collection[str]) -> None:
    """Refuse an insert whose dependencies ``wanted`` are not all ``found`` (stored).

    Raises:
        ValidationError: naming the missing ids (nothing is written).
    """
    missing = [job_id for job_id in wanted if job_id not in found]
    if missing:
        raise ValidationError(
            f"depends_on names {'a job that does' if len(missing) == 1 else 'jobs that do'} not "
            f"exist: {', '.join(missing)}")


def edges_of(job: NewJob) -> tuple[str, ...]:
    """The dependencies of ``job``, each once (its ``waiting_on`` counts them), in order."""
    return tuple(dict.fromkeys(job.depends_on))


def failure_policy(job: NewJob) -> str | None:
    """The stored ``on_dependency_failure`` of ``job``: None without dependencies, else its
    policy (``"cancel"`` when not given, like ``EnqueueOptions``)."""
    if not job.depends_on:
        return None
    return job.on_dependency_failure or "cancel"


def ordered(graph: Mapping[str, Collection[str]]) -> list[str]:
    """The nodes of ``graph`` (each -> the nodes it waits for; one that is not a key of
    ``graph`` is stored, not new), every one after those it waits for: those that wait for
    nothing new first, as given, then the rest in topological order. The sorter sees only the
    nodes that wait for a node that waits: a 10,000-wide fan-in sorts one node, not 10,001.

    Raises:
        graphlib.CycleError: as graphlib's (its second argument the cycle), among those nodes.
    """
    waits = {node: [p for p in before if graph.get(p)] for node, before in graph.items()
             if before}
    return ([node for node, before in graph.items() if not before]
            + list(TopologicalSorter(waits).static_order()))
