"""FastAPI and Starlette: open Soniq with the application, and optionally run a worker in it.

::

    from fastapi import Depends, FastAPI, Request
    from soniq.contrib.fastapi import get_soniq, lifespan

    jobs = Soniq(database_url="postgresql://localhost/myapp")
    api = FastAPI(lifespan=lifespan(jobs, worker=True))     # Starlette(lifespan=...) alike

    @api.post("/signup")
    async def signup(email: str, soniq: Soniq = Depends(get_soniq)) -> dict[str, str]:
        return {"job_id": await soniq.enqueue(send_welcome, email=email)}

The lifespan opens the app's pool at startup and closes it at shutdown. With ``worker=True`` a
worker runs in the lifespan's task group (``app.running_worker``) for small deployments: at
shutdown it stops claiming and lets running jobs finish. Larger ones run ``soniq worker``
processes instead. Nothing here calls ``asyncio.create_task``: the worker is a structured task,
so the same code serves asyncio and trio servers (e.g. Hypercorn with trio).

Already have a lifespan? Nest :func:`soniq_running` in it::

    @asynccontextmanager
    async def my_lifespan(api):
        async with open_other_things(), soniq_running(jobs, worker=True):
            yield {"soniq": jobs}
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

# FastAPI reads a dependency's annotations at run time: ``request: Request`` must resolve.
from starlette.requests import Request  # noqa: TC002

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from soniq.app import Soniq

__all__ = ["get_soniq", "lifespan", "soniq_running"]

#: The key under which the lifespan puts the app in the request state (``request.state.soniq``).
STATE_KEY = "soniq"


@asynccontextmanager
async def soniq_running(soniq: Soniq, *, worker: bool = False, concurrency: int | None = None,
                        queues: Sequence[str] | None = None) -> AsyncIterator[Soniq]:
    """Open ``soniq`` (and with ``worker=True`` run a worker) for the body; close it after."""
    async with soniq:
        if worker:
            async with soniq.running_worker(concurrency=concurrency, queues=queues):
                yield soniq
        else:
            yield soniq


def lifespan(soniq: Soniq, *, worker: bool = False, concurrency: int | None = None,
             queues: Sequence[str] | None = None
             ) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A ``lifespan=`` for FastAPI or Starlette that opens ``soniq`` (see the module docstring)
    and puts it in the request state, where :func:`get_soniq` finds it."""

    @asynccontextmanager
    async def run(_asgi_app: Any) -> AsyncIterator[dict[str, Any]]:
        async with soniq_running(soniq, worker=worker, concurrency=concurrency, queues=queues):
            yield {STATE_KEY: soniq}

    return run


def get_soniq(request: Request) -> Soniq:
    """FastAPI dependency (``Depends(get_soniq)``) returning the app the lifespan opened."""
    soniq: Soniq | None = getattr(request.state, STATE_KEY, None)
    if soniq is None:
        raise RuntimeError("no Soniq app in the request state: pass "
                           "lifespan=soniq.contrib.fastapi.lifespan(app) to FastAPI/Starlette")
    return soniq
