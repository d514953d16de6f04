"""When a schedule fires: :class:`Timing` (``cron=`` or ``every=``, and the timezone a cron
expression is read in) and its misfire plan. Pure functions of time, no I/O.

- ``every=`` fire times sit on a fixed grid (``first + k * every``), so they never drift with the
  tick; the first one is ``every`` after the schedule is added.
- ``cron=`` is evaluated with croniter on the wall clock of the schedule's ``timezone``. Across a
  daylight-saving change a wall-clock time that does not exist (spring forward) is skipped, and
  one that happens twice (fall back) fires once, at its first occurrence.
- Misfires: :meth:`Timing.plan` decides what a schedule due at ``next_run_at`` fires at ``now``
  under the ``scheduler_misfire`` policy (see :mod:`soniq.features.scheduler`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from soniq.errors import ValidationError
from soniq.serialization import utc_now

__all__ = ["Misfire", "Timing"]

#: Cron candidates examined before giving up on an expression that never matches.
_MAX_CRON_STEPS = 1000
_MICROSECOND = timedelta(microseconds=1)
#: The longest ``every=`` accepted (ten years, in seconds): fire-time arithmetic stays in range.
_MAX_EVERY = 315_576_000.0

Misfire = Literal["skip", "catch_up_once"]


@dataclass(frozen=True, slots=True)
class Timing:
    """When a schedule fires: exactly one of ``cron`` / ``every`` (seconds), and the timezone
    the cron expression is read in. Build it with :meth:`parse`, which validates."""

    cron: str | None
    every: float | None
    timezone: str

    @classmethod
    def parse(cls, cron: object = None, every: object = None, timezone: object = "UTC") -> Timing:
        if (cron is None) == (every is None):
            raise ValidationError(
                "a schedule needs exactly one of cron='...' or every=<seconds or timedelta>"
                + (" (got both)" if cron is not None else "")
            )
        if not isinstance(timezone, str) or not timezone:
            raise ValidationError(f"timezone must be an IANA name such as 'Europe/Berlin', "
                                  f"got {timezone!r}")
        _zone(timezone)
        if cron is not None:
            from croniter import croniter  # loads only when a cron schedule is made or read

            expression = " ".join(str(cron).split())
            fields = len(expression.split())
            if (fields != 5 and not expression.startswith("@")) or not croniter.is_valid(expression):
                raise ValidationError(
                    f"invalid cron expression {expression!r}: use five fields "
                    "'minute hour day-of-month month day-of-week', e.g. '*/15 * * * *'"
                )
            timing = cls(expression, None, timezone)
            timing.next_after(utc_now())  # an expression that never matches fails here
            return timing
        if isinstance(every, timedelta):
            seconds = every.total_seconds()
        elif isinstance(every, int | float) and not isinstance(every, bool):
            seconds = float(every)
        else:
            raise ValidationError(f"every must be a number of seconds or a timedelta, "
                                  f"not {type(every).__name__}")
        if not math.isfinite(seconds) or seconds < 1:
            raise ValidationError(f"every must be at least 1 second, got {every!r}")
        if seconds > _MAX_EVERY:
            raise ValidationError(f"every must be at most {_MAX_EVERY:g} seconds (ten years), "
                                  f"got {every!r}; use a cron expression for rare schedules")
        return cls(None, seconds, timezone)

    def next_after(self, after: datetime, *, anchor: datetime | None = None) -> datetime:
        """The first fire time strictly after ``after`` (aware UTC). ``every`` schedules stay on
        the grid of ``anchor`` when given (a fire time of the schedule)."""
        if self.every is not None:
            step = timedelta(seconds=self.every)
            if anchor is None:
                return after + step
            if after < anchor:
                return anchor
            steps = (after - anchor) // step + 1  # exact: timedeltas divide in microseconds
            return anchor + step * steps
        assert self.cron is not None
        return _cron_next(self.cron, _zone(self.timezone), after)

    def plan(self, next_run_at: datetime, now: datetime, *, misfire: Misfire,
             grace: timedelta) -> tuple[datetime | None, datetime]:
        """For a schedule due at ``next_run_at <= now``: (the fire time to enqueue, or None to
        skip), and the next fire time after ``now``."""
        window = now - grace
        if self.every is not None:  # on the grid: no need to walk it
            step = timedelta(seconds=self.every)
            latest_on_grid = next_run_at + step * ((now - next_run_at) // step)
            upcoming_on_grid = latest_on_grid + step
            if misfire == "catch_up_once":
                return next_run_at, upcoming_on_grid
            return (latest_on_grid if latest_on_grid >= window else None), upcoming_on_grid
        first = (next_run_at if next_run_at >= window
                 else self.next_after(window - _MICROSECOND, anchor=next_run_at))
        latest: datetime | None = None
        upcoming = first
        while upcoming <= now:
            latest = upcoming
            upcoming = self.next_after(upcoming, anchor=next_run_at)
        if misfire == "catch_up_once":
            return next_run_at, upcoming
        return latest, upcoming


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(
            f"unknown timezone {name!r}: use an IANA name such as 'UTC' or 'Europe/Berlin'"
        ) from None


def _cron_next(expression: str, zone: ZoneInfo, after: datetime) -> datetime:
    """The next instant after ``after`` whose wall-clock time in ``zone`` matches; wall times
    that do not exist are skipped, repeated ones count once (their first occurrence)."""
    from croniter import croniter

    wall = after.astimezone(zone).replace(tzinfo=None)
    try:
        candidates = croniter(expression, wall)
        for _ in range(_MAX_CRON_STEPS):
            candidate = candidates.get_next(datetime)
            instant = _wall_to_utc(candidate, zone)
            if instant is not None and instant > after:
                return instant
    except (ValueError, KeyError, OverflowError) as exc:
        raise ValidationError(f"cron expression {expression!r} has no next time: {exc}") from None
    raise ValidationError(f"cron expression {expression!r} never matches a real time")


def _wall_to_utc(wall: datetime, zone: ZoneInfo) -> datetime | None:
    """The first instant showing ``wall`` in ``zone``; None when the clock skips it."""
    instant = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) != wall:
        return None
    return instant
