"""The one WHERE builder of the PostgreSQL adapter, for the stores' filtered reads (job listing,
dead letters, job logs, the dashboard's search, webhook deliveries).

Conditions are text from code only (column names, operators, casts); every value is a bind
parameter, numbered after the statement's own ``$1 .. $(first - 1)``. A filter whose value is
``None`` is left out, so each combination of filters is its own plain statement (not
``$1 IS NULL OR ...``), and a cached generic plan can still use a partial index on status.
"""

from __future__ import annotations

from typing import Any

__all__ = ["where"]


def where(*filters: tuple[str, Any], always: tuple[str, ...] = (),
          first: int = 1) -> tuple[str, list[Any]]:
    """``(" WHERE ...", params)`` (``""`` when there is no condition): the ``always``
    conditions, then each ``(condition, value)`` filter whose value is not ``None``, its
    parameter written ``{}`` in the condition (``("queue = {}::text", queue)``) and numbered
    from ``$first``."""
    conditions = list(always)
    params: list[Any] = []
    for condition, value in filters:
        if value is not None:
            conditions.append(condition.format(f"${first + len(params)}"))  # its one {} slot
            params.append(value)
    return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), params
