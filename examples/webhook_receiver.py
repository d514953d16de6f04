"""A webhook receiver that verifies Soniq's signatures (Standard Webhooks headers).

``receive(secret, headers, body)`` is what your endpoint does: reject a request whose signature or
timestamp is wrong, de-duplicate on ``webhook-id`` (the same id is sent again on retries), then
act on the event. Run ``python examples/webhook_receiver.py`` to see it end to end: a receiver on
127.0.0.1, an endpoint registered for ``job.done``, a job, a worker, a verified delivery (SQLite
file ``webhook_example.db``). In production the receiver is another service, and its URL must
not be on a private address (``allow_private`` is for this demo).
"""

from __future__ import annotations

import json
import os
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import anyio

from soniq import Soniq
from soniq.features.webhooks import verify_signature

SEEN: set[str] = set()
RECEIVED: list[dict[str, Any]] = []


def receive(secret: str, headers: dict[str, str], body: bytes) -> int:
    """Return the HTTP status to answer: 401 for a bad signature, 200 otherwise."""
    if not verify_signature(secret, headers, body, tolerance=300):
        return 401
    delivery_id = headers["webhook-id"]
    if delivery_id not in SEEN:  # a retry of a delivery we already handled: answer 200 again
        SEEN.add(delivery_id)
        RECEIVED.append(json.loads(body))
    return 200


def serve(secret: str) -> HTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["content-length"]))
            self.send_response(receive(secret, {k.lower(): v for k, v in self.headers.items()},
                                       body))
            self.end_headers()

        def log_message(self, *args: object) -> None:  # keep the demo's output short
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


app = Soniq(database_url=os.environ.get("SONIQ_DATABASE_URL", "webhook_example.db"),
            webhook_poll_interval=0.1, webhook_reload_interval=0)


@app.job()
async def resize(image: str) -> str:
    return f"{image} resized"


async def statuses(endpoint_id: str) -> list[str]:
    return [d["status"] for d in await app.webhooks.deliveries(endpoint_id)]


async def main() -> None:
    async with app:
        secret = "whsec_" + "example-secret-please-generate-your-own"  # or let register() make one
        server = serve(secret)
        url = f"http://127.0.0.1:{server.server_address[1]}/hooks"
        endpoint = await app.webhooks.register(url, events=["job.done"], secret=secret,
                                               allow_private=True)
        async with app.running_worker():
            job_id = await app.enqueue(resize, image="cat.png")
            with anyio.fail_after(10):  # the receiver answers before the delivery is recorded
                while not RECEIVED or await statuses(endpoint["id"]) != ["delivered"]:
                    await anyio.sleep(0.05)
        server.shutdown()
        event = RECEIVED[0]
        print("verified", event["type"], event["data"]["job_id"] == job_id)
        forged = receive(secret, {"webhook-id": "x", "webhook-timestamp": "0",
                                  "webhook-signature": "v1,AAAA"}, b"{}")
        print("forged request answered", forged)
        print(await statuses(endpoint["id"]))


if __name__ == "__main__":
    anyio.run(main)
