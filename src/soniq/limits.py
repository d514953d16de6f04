"""Limits of a job (``@app.job(concurrency_limit=..., concurrency_key=..., ordered=...,
rate_limit=..., rate_key=...)``) and of a queue: the checks at registration, the stored key of
one job, and the token bucket of a rate.

A limited job's row carries its ``concurrency_key``: the key argument's value as canonical JSON
(``''`` for a limit on the job name alone). The backends keep one slot counter per job name and
key (``soniq_slots``); see ARCHITECTURE.md, "Concurrency limits". A rate-limited job's row
carries its ``rate_key`` the same way, and its starts take tokens from the bucket of its job name
and key (``soniq_rate_buckets``); a queue's rate limit has one bucket per queue. See
ARCHITECTURE.md, "Rate limits".
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from soniq.errors import ConfigurationError, JobArgumentsError, did_you_mean
from soniq.serialization import canonical_json

if TYPE_CHECKING:
    from collections.abc import Collection, Mapping
    from datetime import datetime

__all__ = ["LONGEST_PERIOD", "MAX_LIMIT", "Rate", "RateGate", "check_limits", "check_rate", "limit_key",
           "limit_options", "parse_rate", "stored_limits", "stored_rate"]

#: The largest ``concurrency_limit``.
MAX_LIMIT = 1_000_000


_RATE = re.compile(r"\s*(\d{1,9})\s*/\s*([smh])\s*")
_PERIODS = {"s": 1.0, "m": 60.0, "h": 3600.0}
#: The longest period of a rate, in seconds: a bucket last refilled this long ago is full again.
LONGEST_PERIOD = max(_PERIODS.values())


@dataclass(frozen=True, slots=True)
class Rate:
    """A rate limit ``"N/s"``, ``"N/m"`` or ``"N/h"`` as a token bucket: capacity ``count``,
    refilled at ``count`` per ``seconds``. So over any interval of length T, starts are at most
    ``count * T / seconds + count``."""

    count: int
    seconds: float

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}[self.seconds]
        return f"{self.count}/{unit}"

    def tokens(self, tokens: float | None, refilled_at: datetime | None,
               now: datetime) -> float:
        """The bucket's tokens at ``now``: full without a stored state (``tokens`` None), else
        the stored ones plus the refill since ``refilled_at``, at most ``count``."""
        if tokens is None or refilled_at is None:
            return float(self.count)
        elapsed = max(0.0, (now - refilled_at).total_seconds())
        return min(float(self.count), tokens + elapsed * self.count / self.seconds)


@dataclass(frozen=True, slots=True)
class RateGate:
    """A rate-limited job name a worker claims for (it registered the job): the rows stored
    with a ``rate_key`` start only with a token of the bucket of (``job_name``, key)."""

    job_name: str
    rate: Rate


def parse_rate(text: object) -> Rate | None:
    """``"N/s"``, ``"N/m"`` or ``"N/h"`` (1 <= N < 10**9; spaces allowed) as a :class:`Rate`;
    None for anything else."""
    match = _RATE.fullmatch(text) if isinstance(text, str) else None
    if match is None or int(match[1]) < 1:
        return None
    return Rate(int(match[1]), _PERIODS[match[2]])


def check_rate(name: str, options: Mapping[str, Any], *, fields: Collection[str],
               any_name: bool) -> tuple[Rate | None, str | None]:
    """``rate_limit`` and ``rate_key`` of job ``name`` checked: (rate, key argument).

    Raises:
        ConfigurationError: naming the value that is wrong.
    """
    text, key = options.get("rate_limit"), options.get("rate_key")
    rate = None if text is None else parse_rate(text)
    if text is not None and rate is None:
        raise ConfigurationError(
            f"rate_limit of job {name!r} must look like 20/s, 600/m or 1000/h (a count >= 1 per "
            f"second, minute or hour), got {text!r}")
    if key is not None:
        _check_key(name, "rate_key", key, fields, any_name)
        if rate is None:
            raise ConfigurationError(f"rate_key={key!r} on job {name!r} needs rate_limit='N/s'")
    return rate, key


def _check_key(name: str, option: str, key: object, fields: Collection[str],
               any_name: bool) -> None:
    """``option`` (a key option) of job ``name`` must name one of its arguments."""
    if not isinstance(key, str) or (key not in fields and not any_name):
        raise ConfigurationError(
            f"{option} of job {name!r} must name one of its arguments "
            f"({', '.join(sorted(fields)) or 'it has none'}), got {key!r}"
            f"{did_you_mean(str(key), fields)}")


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
        _check_key(name, "concurrency_key", key, fields, any_name)
        if limit is None:
            raise ConfigurationError(
                f"concurrency_key={key!r} on job {name!r} needs concurrency_limit=N "
                "(or ordered=True)")
    return limit, key, bool(ordered)


def limit_key(job_name: str, key: str | None, args: Mapping[str, Any],
              signature: inspect.Signature | None = None, *,
              option: str = "concurrency_key") -> str:
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
            f"({option}), but the arguments lack {key!r}")
    return canonical_json(parameter.default)


def limit_options(limit: int | None, key: str | None, ordered: bool,
                  rate: Rate | None = None, rate_key: str | None = None) -> dict[str, Any]:
    """What a stored job definition's ``options`` hold about limits (nothing for an unlimited
    job, so its digest stays what it was before limits existed)."""
    options: dict[str, Any] = {}
    if limit is not None:
        options.update(concurrency_limit=limit, concurrency_key=key, ordered=ordered)
    if rate is not None:
        options.update(rate_limit=str(rate), rate_key=rate_key)
    return options


def stored_limits(options: Mapping[str, Any]) -> tuple[int | None, str | None]:
    """(limit, key argument) from a stored definition's ``options`` (:func:`limit_options`);
    (None, None) when it has no limit or holds something else (a row written by hand)."""
    limit, key = options.get("concurrency_limit"), options.get("concurrency_key")
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        return None, None
    return limit, key if isinstance(key, str) else None


def stored_rate(options: Mapping[str, Any]) -> tuple[Rate | None, str | None]:
    """(rate, key argument) from a stored definition's ``options`` (:func:`limit_options`);
    (None, None) when it has no rate limit or holds something else."""
    rate, key = parse_rate(options.get("rate_limit")), options.get("rate_key")
    if rate is None:
        return None, None
    return rate, key if isinstance(key, str) else None
