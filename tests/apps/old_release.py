"""An older release of tests/apps/chaos.py for rolling-deploy tests: a worker of this app
registers none of the chaos jobs (its queue database comes from SONIQ_DATABASE_URL)."""

from __future__ import annotations

from soniq import Soniq

app = Soniq()


@app.job(name="old_release.only")
async def only() -> None: ...
