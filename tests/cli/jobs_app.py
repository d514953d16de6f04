"""An app for the CLI subprocess tests; its database comes from SONIQ_DATABASE_URL."""

from __future__ import annotations

from soniq import Soniq

app = Soniq()


@app.job(name="cli.add", queue="math")
async def add(a: int, b: int) -> int:
    return a + b


@app.job(name="cli.fail", retries=0)
async def fail(n: int = 0) -> None:
    raise RuntimeError(f"boom {n}")


def not_a_job() -> None:
    """A plain function: enqueueing it is a usage error."""
