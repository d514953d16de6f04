"""A TCP proxy between workers and PostgreSQL that can delay, cut and half-open connections.

It runs as a task in the test's event loop (``await tg.start(proxy.serve)``) and forwards every
accepted connection to the target. Controls, on every live link or on the next ones:

- ``delay = seconds``: each chunk waits that long before it is forwarded;
- ``blackhole(matching=b"...")``: live links (those whose client has sent ``matching``) stop
  forwarding in both directions but keep their sockets open -- to both ends the connection is
  alive and silent (a half-open connection); new links work;
- ``reset()``: live links are closed with a TCP RST;
- ``cut_on(marker)``: once a client prepares a statement whose text contains ``marker``, the
  server's answer to the first execution of that statement is swallowed and the link reset: the
  server has done the work (and committed it), the client never hears of it. (It follows the
  statement by the name asyncpg gives it, so other round trips in between -- type introspection
  -- pass.)
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass, field

import anyio
from anyio.abc import SocketAttribute, SocketStream, TaskStatus

STATEMENT = b"__asyncpg_stmt_"


@dataclass
class Cut:
    marker: bytes
    fired: anyio.Event = field(default_factory=anyio.Event)


class Link:
    def __init__(self, proxy: Proxy, client: SocketStream, server: SocketStream) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.blackholed = False
        self.closed = False
        self._armed: Cut | None = None  # the marker was seen on this link
        self._statement = b""  # the name of the statement that holds it
        self._drop_reply = False
        self.said = bytearray()  # what the client sent (the first 64 KiB), for ``matching``

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, self.client, self.server, True)
            tg.start_soon(self._pump, self.server, self.client, False)

    async def _pump(self, source: SocketStream, sink: SocketStream, upstream: bool) -> None:
        try:
            while True:
                chunk = await source.receive()
                if self.proxy.delay:
                    await anyio.sleep(self.proxy.delay)
                while self.blackholed and not self.closed:  # hold it: the peers see silence
                    await anyio.sleep(0.05)
                if upstream:
                    if len(self.said) < 65536:
                        self.said += chunk
                    self._watch(chunk)
                elif self._drop_reply:
                    assert self._armed is not None
                    self._armed.fired.set()
                    await self.reset()
                    return
                await sink.send(chunk)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            await self.close()

    def _watch(self, chunk: bytes) -> None:
        if self._armed is None:
            cut = self.proxy.cut
            if cut is not None and not cut.fired.is_set() and cut.marker in chunk:
                start = chunk.rfind(STATEMENT, 0, chunk.index(cut.marker))
                if start >= 0:
                    self._armed = cut
                    self._statement = chunk[start:chunk.index(b"\x00", start)]
        elif chunk[:1] == b"B" and self._statement in chunk:  # Bind + Execute of that statement
            self._drop_reply = True

    async def reset(self) -> None:
        """Close both sides with RST (SO_LINGER 0), not a polite FIN."""
        for stream in (self.client, self.server):
            raw: socket.socket = stream.extra(SocketAttribute.raw_socket)
            with contextlib.suppress(OSError):
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await self.close()

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.proxy.links.discard(self)
            with anyio.CancelScope(shield=True):  # also when the proxy is being torn down
                for stream in (self.client, self.server):
                    await stream.aclose()


class Proxy:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = 0
        self.delay = 0.0
        self.cut: Cut | None = None
        self.links: set[Link] = set()
        self.accepted = 0

    def url(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        self.port = listener.extra(SocketAttribute.local_port)
        task_status.started()
        async with listener:
            await listener.serve(self._handle)

    async def _handle(self, client: SocketStream) -> None:
        try:
            server = await anyio.connect_tcp(*self.target)
        except OSError:
            await client.aclose()
            return
        self.accepted += 1
        link = Link(self, client, server)
        self.links.add(link)
        await link.run()

    def blackhole(self, matching: bytes = b"") -> int:
        """Half-open every live link whose client sent ``matching``; returns how many."""
        chosen = [link for link in self.links if matching in link.said]
        for link in chosen:
            link.blackholed = True
        return len(chosen)

    async def reset(self) -> int:
        """RST every live link; returns how many."""
        links = list(self.links)
        for link in links:
            await link.reset()
        return len(links)

    def cut_on(self, marker: bytes) -> Cut:
        self.cut = Cut(marker)
        return self.cut
