"""The live hub on its own: a lost LISTEN connection leaves it polling (and retrying), never
stops the change feed."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from soniq import Soniq
from soniq.dashboard.live import LiveHub
from soniq.errors import DatabaseError
from tests.helpers import wait_for

pytestmark = pytest.mark.anyio


async def test_a_failing_listen_leaves_the_feed_polling() -> None:
    app = Soniq(backend="memory")

    @app.job(name="tests.noop")
    def noop() -> None: ...

    attempts = 0

    async def broken_listen(on_notify: Any, *, task_status: Any) -> None:
        nonlocal attempts
        attempts += 1
        raise DatabaseError("the LISTEN connection dropped")

    app.backend.listen = broken_listen  # type: ignore[method-assign]
    hub = LiveHub(app, interval=0.05, rollup_interval=60)
    async with app, anyio.create_task_group() as tg:
        await tg.start(hub.run)
        await wait_for(lambda: "LISTEN failed" in hub.listen_status)
        feed = hub.changes()
        assert (await feed.__anext__())["queues"] == []
        await app.enqueue("tests.noop")
        changed = await feed.__anext__()
        assert changed is not None and changed["queues"][0]["queued"] == 1
        assert attempts >= 1
        await feed.aclose()
        tg.cancel_scope.cancel()
    assert hub.clients == 0
