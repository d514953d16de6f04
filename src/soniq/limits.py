"""Concurrency limits of a job (``@app.job(concurrency_limit=..., concurrency_key=...,
ordered=...)``): the checks at registration and the stored key of one job.

A limited job's row carries its ``concurrency_key``: the key argument's value as canonical JSON
(``''`` for a limit on the job name alone). The backends keep one slot counter per job name and
key (``soniq_slots``); see ARCHITECTURE.md, "Concurrency limits".
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError, JobArgumentsError, did_you_mean
from soniq.serialization import canonical_json

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping

__all__ = ["MAX_LIMIT", "check_limits", "limit_key", "limit_options", "stored_limits"]

#: The largest ``concurrency_limit``.
MAX_LIMIT = 1_000_000


def check_limits(name: str, options: Mapping[str, Any], *, fields: Collection[str],
                 any_name: bool) -> tuple[int | None, str | None, bool]:
    """``concurrency_limit``, ``concurrency_key`` and ``ordered`` of job ``name`` checked:
    (limit, key, ordered). ``fields``: the job's argument names; ``any_name``: it takes any
    keyword (``**kwargs``).

    Raises:
        ConfigurationError: naming the value that is wrong.
    """
    limit = options.get("concurrency_limit")
    key = options.get("concurrency_key")
    ordered = options.get("ordered", False)
    if ordered not in (True, False):
        raise ConfigurationError(f"ordered must be True or False, got {ordered!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool)
                              or not 1 <= limit <= MAX_LIMIT):
        raise ConfigurationError(
            f"concurrency_limit of job {name!r} must be an integer from 1 to {MAX_LIMIT}, "
            f"got {limit!r}")
    if ordered:
        if key is None:
            raise ConfigurationError(
                f"ordered=True on job {name!r} needs a concurrency_key (the argument whose "
                "jobs run in order)")
        if limit not in (None, 1):
            raise ConfigurationError(
                f"ordered=True on job {name!r} runs one job per key at a time; drop "
                f"concurrency_limit={limit!r} (it is 1)")
        limit = 1
    if key is not None:
        if not isinstance(key, str) or (key not in fields and not any_name):
            raise ConfigurationError(
                f"concurrency_key of job {name!r} must name one of its arguments "
                f"({', '.join(sorted(fields)) or 'it has none'}), got {key!r}"
                f"{did_you_mean(str(key), fields)}")
        if limit is None:
            raise ConfigurationError(
                f"concurrency_key={key!r} on job {name!r} needs concurrency_limit=N "
                "(or ordered=True)")
    return limit, key, bool(ordered)


def limit_key(job_name: str, key: str | None, args: Mapping[str, Any],
              signature: inspect.Signature | None = None) -> str:
    """The stored ``concurrency_key`` of a limited job with (decoded) ``args``: ``''`` without a
    key argument, else its value as canonical JSON -- the ``signature``'s default when the
    arguments lack it.

    Raises:
        JobArgumentsError: the key argument is missing and has no default (naming it).
    """
    if key is None:
        return ""
    if key in args:
        return canonical_json(args[key])
    parameter = None if signature is None else signature.parameters.get(key)
    if parameter is None or parameter.default is inspect.Parameter.empty:
        raise JobArgumentsError(
            f"job {job_name!r} is limited per value of its argument {key!r} "
            f"(concurrency_key), but the arguments lack {key!r}")
    return canonical_json(parameter.default)


def limit_options(limit: int | None, key: str | None, ordered: bool) -> dict[str, Any]:
    """What a stored job definition's ``options`` hold about limits (nothing for an unlimited
    job, so its digest stays what it was before limits existed)."""
    if limit is None:
        return {}
    return {"concurrency_limit": limit, "concurrency_key": key, "ordered": ordered}


def stored_limits(options: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """(limit, key argument) from a stored definition's ``options`` (:func:`limit_options`);
    (None, None) when it has no limit or holds something else (a row written by hand)."""
    limit, key = options.get("concurrency_limit"), options.get("concurrency_key")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        return None, None
    return limit, key if isinstance(key, str) else None
