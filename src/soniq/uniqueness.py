"""Uniqueness options checked (``@app.job(unique=..., unique_by=..., unique_for=...,
unique_while=..., on_conflict=..., max_delay=...)`` and the same fields of
:class:`~soniq.types.EnqueueOptions`) and a job's dedup key derived from its arguments.

What the key does once stored (which job stands on it, when it blocks, what ``replace`` changes)
is the backends' (:mod:`soniq.backends.keys`); see docs/tutorial/uniqueness.md.
"""

from __future__ import annotations

import typing
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from soniq.errors import ValidationError, did_you_mean
from soniq.limits import limit_key
from soniq.serialization import canonical_json, has_unstorable_chars, unique_key
from soniq.settings import LONGEST_DELAY
from soniq.types import Uniqueness

if typing.TYPE_CHECKING:
    import inspect
    from collections.abc import Callable

__all__ = ["BLOCKING_STATUSES", "UNIQUE_OPTIONS", "UniqueRule", "check_dedup_key", "check_unique",
           "dedup_key_of", "rule_options", "stored_rule"]

#: The options (of ``@app.job`` and fields of ``EnqueueOptions``) about uniqueness.
UNIQUE_OPTIONS = ("unique_by", "unique_for", "unique_while", "on_conflict", "max_delay")

#: What ``unique_while`` may name (``"queued"`` covers ``"waiting"`` too).
BLOCKING_STATUSES = ("queued", "processing")


@dataclass(frozen=True, slots=True)
class UniqueRule:
    """A job's uniqueness: ``by`` -- the arguments that form the key (None: all of them);
    ``policy`` -- what the key does when stored."""

    by: tuple[str, ...] | None = None
    policy: Uniqueness = Uniqueness()


def check_unique(name: str, options: Mapping[str, Any], *, base: UniqueRule | None = None,
                 fields: Collection[str] | None, any_name: bool = False,
                 dedup_key: bool = False) -> UniqueRule | None:
    """The uniqueness of job ``name`` from ``options`` (``unique`` and :data:`UNIQUE_OPTIONS`;
    a missing or None one is ``base``'s). Any of them set makes the job unique; ``unique=False``
    alone turns a ``base`` off. ``fields``: the job's argument names (None: not known here);
    ``dedup_key``: the call names its key itself.

    Raises:
        ValidationError: naming the value that is wrong.
    """
    given = {key: options[key] for key in UNIQUE_OPTIONS if options.get(key) is not None}
    unique = options.get("unique")
    if unique not in (None, True, False):
        raise ValidationError(f"unique of job {name!r} must be True or False, got {unique!r}")
    if not given and not dedup_key and (unique is False or (unique is None and base is None)):
        return None
    rule = base or UniqueRule()
    by = rule.by if "unique_by" not in given else _by(name, given["unique_by"], fields, any_name)
    policy = rule.policy
    blocking = policy.blocking
    if "unique_while" in given:
        blocking = _blocking(name, given["unique_while"])
    window = _seconds(name, "unique_for", given.get("unique_for", policy.window))
    conflict = given.get("on_conflict", "replace" if policy.replace else "keep")
    if conflict not in ("keep", "replace"):
        raise ValidationError(f"on_conflict of job {name!r} must be 'keep' or 'replace', got "
                              f"{conflict!r}{did_you_mean(str(conflict), ('keep', 'replace'))}")
    max_delay = _seconds(name, "max_delay", given.get("max_delay", policy.max_delay))
    if conflict == "replace" and by is None and not dedup_key:
        raise ValidationError(
            f"on_conflict='replace' on job {name!r} needs unique_by=[...] (the arguments that "
            "name the job to replace) or a dedup_key: with a key of all the arguments, a "
            "replace would change nothing")
    if max_delay is not None and conflict != "replace":
        raise ValidationError(f"max_delay on job {name!r} bounds on_conflict='replace'; "
                              "set on_conflict='replace' or drop max_delay")
    if not blocking and window is None:
        raise ValidationError(f"unique_while=() on job {name!r} blocks nothing without "
                              "unique_for; give a window or a status")
    return UniqueRule(by, Uniqueness(blocking, window, conflict == "replace", max_delay))


def rule_options(rule: UniqueRule | None) -> dict[str, Any]:
    """What a stored job definition's ``options`` hold about uniqueness beyond ``unique``: the
    options that differ from ``unique=True``'s (nothing for a plain unique job, so its digest
    stays what it was)."""
    if rule is None:
        return {}
    policy = rule.policy
    options: dict[str, Any] = {"unique_by": None if rule.by is None else list(rule.by),
                               "unique_for": policy.window,
                               "unique_while": (None if policy.blocking == ("queued",)
                                                else list(policy.blocking)),
                               "on_conflict": "replace" if policy.replace else None,
                               "max_delay": policy.max_delay}
    return {key: value for key, value in options.items() if value is not None}


def stored_rule(name: str, options: Mapping[str, Any]) -> UniqueRule | None:
    """The uniqueness of job ``name`` as its workers stored it (:func:`rule_options`)."""
    if options.get("unique") is not True:
        return None
    return check_unique(name, {"unique": True, **options}, fields=None)


def _by(name: str, raw: object, fields: Collection[str] | None,
        any_name: bool) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, Sequence) or not raw:
        raise ValidationError(f"unique_by of job {name!r} must be a non-empty list of argument "
                              f"names, got {raw!r}")
    for arg in raw:
        if not isinstance(arg, str):
            raise ValidationError(f"unique_by of job {name!r} names {arg!r}, which is not an "
                                  "argument name")
        if fields is not None and not any_name and arg not in fields:
            raise ValidationError(
                f"unique_by of job {name!r} names {arg!r}, which is not one of its arguments"
                f"{did_you_mean(arg, fields)} ({', '.join(sorted(fields)) or 'none'})")
    return tuple(dict.fromkeys(raw))


def _blocking(name: str, raw: object) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, Sequence | set | frozenset):
        raise ValidationError(f"unique_while of job {name!r} must be a tuple of statuses, got "
                              f"{raw!r}")
    for status in raw:
        if status not in BLOCKING_STATUSES:
            raise ValidationError(
                f"unique_while of job {name!r} names {status!r}; use "
                f"{' and/or '.join(map(repr, BLOCKING_STATUSES))} (finished jobs block through "
                "unique_for)")
    return tuple(s for s in BLOCKING_STATUSES if s in raw)


def _seconds(name: str, option: str, value: object) -> float | None:
    if value is None:
        return None
    if (not isinstance(value, int | float) or isinstance(value, bool)
            or not 0 < value <= LONGEST_DELAY):
        raise ValidationError(f"{option} of job {name!r} must be a number of seconds above 0 "
                              f"and at most {LONGEST_DELAY}, got {value!r}")
    return float(value)


def check_dedup_key(dedup_key: object) -> str:
    """``dedup_key`` if it is storable text.

    Raises:
        ValidationError: it is not.
    """
    if not isinstance(dedup_key, str) or not 0 < len(dedup_key) <= 512:
        raise ValidationError("dedup_key must be a non-empty string of at most 512 characters")
    if has_unstorable_chars(dedup_key):
        raise ValidationError(
            f"dedup_key {dedup_key!r} contains a NUL character or a lone surrogate, which the "
            "database cannot store; use printable text (e.g. a hash of the raw key)")
    return dedup_key


def dedup_key_of(name: str, rule: UniqueRule, args: Mapping[str, Any], args_json: str,
                 signature: inspect.Signature | None,
                 digest: Callable[[str], str] | None) -> str:
    """The dedup key of job ``name`` with (decoded) ``args`` (``args_json`` encoded): name and a
    hash of the ``by`` arguments (an argument left out takes the ``signature``'s default), or of
    all of them. ``digest`` (encrypted jobs) hashes it with the app's key.

    Raises:
        JobArgumentsError: a ``by`` argument is missing and has no default.
    """
    if rule.by is None:
        key = unique_key(name, args_json)
    else:
        values = ",".join(f"{canonical_json(arg)}:"
                          f"{limit_key(name, arg, args, signature, option='unique_by')}"
                          for arg in rule.by)
        key = unique_key(name, f"{{{values}}}")  # the key of unique=True with only these
    return key if digest is None else f"unique:{name}:{digest(key)}"
