"""Transactional enqueue on PostgreSQL: the job exists only if your transaction commits.

Run it with ``SONIQ_DATABASE_URL=postgresql://user@host/db python examples/transactional_enqueue.py``
after ``soniq setup --database-url ...`` (which creates Soniq's tables).
"""

from __future__ import annotations

import anyio

from soniq import Soniq

app = Soniq()  # SONIQ_DATABASE_URL


@app.job(queue="receipts")
async def send_receipt(order_id: int) -> str:
    return f"receipt for order {order_id}"


async def place_order(order_id: int, *, fail: bool = False) -> None:
    async with app.backend.acquire() as conn, conn.transaction():
        await conn.execute("INSERT INTO example_orders (id) VALUES ($1)", order_id)
        await app.enqueue(send_receipt, connection=conn, order_id=order_id)
        if fail:
            raise RuntimeError("payment declined")  # rolls back the order AND its job


async def main() -> None:
    async with app:
        await app.ensure_initialized()
        async with app.backend.acquire() as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS example_orders (id int PRIMARY KEY)")
            await conn.execute("TRUNCATE example_orders")
        await place_order(1)
        try:
            await place_order(2, fail=True)
        except RuntimeError as exc:
            print("order 2 failed:", exc)
        await app.run_worker(run_once=True)
        jobs = await app.list_jobs(queue="receipts")
        print("jobs:", sorted((job["args"]["order_id"], job["status"]) for job in jobs))
        print("results:", [await app.get_result(job["id"]) for job in jobs])


if __name__ == "__main__":
    anyio.run(main)
