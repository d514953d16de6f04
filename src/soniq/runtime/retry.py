"""When a failed attempt runs again: a pure function of the job's options and the attempt."""

from __future__ import annotations

import random

from soniq.settings import LONGEST_DELAY

__all__ = ["retry_delay"]


def retry_delay(attempt: int, *, delay: float | tuple[float, ...], backoff: bool,
                max_delay: float | None, rng: random.Random | None = None) -> float:
    """Seconds to wait before the attempt after ``attempt`` (1-based) failed.

    - ``delay`` a number: that many seconds; with ``backoff`` it doubles per attempt
      (``delay * 2 ** (attempt - 1)``, at least 1 s as the base when ``delay`` is 0) and gets
      ±10 % jitter so that a burst of failures does not retry in lockstep.
    - ``delay`` a tuple: the entry for this retry, the last one reused after the end; no jitter.
    - ``max_delay`` caps the result, and so does ``LONGEST_DELAY`` (ten years): a date past
      ``datetime``'s range would fail the worker computing it.
    """
    if isinstance(delay, tuple):
        seconds = delay[min(attempt, len(delay)) - 1]
    elif backoff:
        seconds = (delay or 1.0) * 2.0 ** (attempt - 1)
        seconds *= (rng or random).uniform(0.9, 1.1)
    else:
        seconds = delay
    if max_delay is not None:
        seconds = min(seconds, max_delay)
    return min(max(0.0, seconds), LONGEST_DELAY)
