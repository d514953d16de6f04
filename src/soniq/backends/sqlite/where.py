"""The one WHERE builder of the SQLite adapter, for the stores' filtered reads (job listing,
dead letters, job logs, the dashboard's search, webhook deliveries).

Conditions are text from code only (column names, operators); every value is a ``?`` bind
parameter, datetimes as the stored text (:func:`~soniq.backends.sqlite.sql.to_db`). A filter
whose value is ``None`` is left out.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from soniq.backends.sqlite.sql import to_db

__all__ = ["where"]


def where(*filters: tuple[str, Any], always: tuple[str, ...] = ()) -> tuple[str, list[Any]]:
    """``(" WHERE ...", params)`` (``""`` when there is no condition): the ``always``
    conditions, then each ``(condition, value)`` filter whose value is not ``None``, its one
    parameter written ``?`` in the condition (``("queue = ?", queue)``). Put the statement's
    own parameters after ``params`` when they follow the clause."""
    conditions = list(always)
    params: list[Any] = []
    for condition, value in filters:
        if value is not None:
            conditions.append(condition)
            params.append(to_db(value) if isinstance(value, datetime) else value)
    return (f" WHERE {' AND '.join(conditions)}" if conditions else ""), params
