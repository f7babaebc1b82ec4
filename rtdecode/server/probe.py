"""Websocket pings the app can wait for: flow control for clients that never ack.

A viewer that acknowledges frames (``ack``) tells the server what it has taken in. A
client that never does (a script, a third-party dashboard) gives the server no such
signal, and the kernel's socket buffers on both ends can then hold minutes of frames for
it. Every RFC 6455 client answers a ping with a pong, though, and it does so only when it
reads the socket: a pong for a ping sent right after a message proves the client read
past that message. The broadcaster uses this as an implicit ack for such clients: one
message, then a ping, and nothing more until its pong (``Client`` in
:mod:`rtdecode.server.broadcast`).

ASGI has no ping, so this module gives uvicorn a websocket protocol that offers one to
the app as a scope extension: ``scope["extensions"][PROBE_EXTENSION]["ping"]()`` sends a
ping and returns a future that completes when its pong arrives (or fails when the
connection is lost). :func:`rtdecode.server.app.run_server_in_thread` (what ``rtdecode
serve`` runs) installs it; under a plain ``uvicorn`` command the extension is absent and
a client that never acks is bounded by its queue and the socket buffers only.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
from typing import TYPE_CHECKING, Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from rtdecode.server.protocol import PROBE_EXTENSION

if TYPE_CHECKING:  # pragma: no cover - typing only
    from uvicorn.config import Config
    from uvicorn.server import ServerState
    from websockets.frames import Frame
    from websockets.http11 import Request

__all__ = ["PROBE_EXTENSION", "ProbingWebSocketProtocol"]
#: Our ping payloads: this prefix and a counter (8 bytes), never the 4 random bytes of
#: uvicorn's own keepalive pings, so the two never answer each other's waiters.
_PREFIX = b"rtd:"
_COUNTER = struct.Struct(">I")


class ProbingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets protocol, plus pings whose pongs the app can await."""

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._probe_ids = itertools.count(1)
        self._probes: dict[bytes, asyncio.Future[float]] = {}

    def handle_connect(self, event: Request) -> None:  # noqa: D102 (uvicorn's hook)
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # a websocket upgrade (not a refused handshake)
            scope["extensions"][PROBE_EXTENSION] = {"ping": self.probe}

    def probe(self) -> asyncio.Future[float]:
        """Send a ping now; the future's result is the round trip in seconds.

        Raises
        ------
        ConnectionError
            Set on the future when the connection is lost or closing before the pong.
        """
        future: asyncio.Future[float] = self.loop.create_future()
        if self.transport is None or self.transport.is_closing() or self.close_sent:
            future.set_exception(ConnectionError("the websocket is closing"))
            return future
        payload = _PREFIX + _COUNTER.pack(next(self._probe_ids) & 0xFFFFFFFF)
        self._probes[payload] = future
        future.t_sent = self.loop.time()  # type: ignore[attr-defined]
        self.conn.send_ping(payload)
        self.transport.write(b"".join(self.conn.data_to_send()))
        return future

    def handle_pong(self, event: Frame) -> None:  # noqa: D102 (uvicorn's hook)
        future = self._probes.pop(bytes(event.data), None)
        if future is None:
            super().handle_pong(event)  # uvicorn's keepalive
        elif not future.done():
            future.set_result(self.loop.time() - future.t_sent)  # type: ignore[attr-defined]

    def connection_lost(self, exc: Exception | None) -> None:  # noqa: D102 (uvicorn's hook)
        probes, self._probes = self._probes, {}
        for future in probes.values():
            if not future.done():
                future.set_exception(ConnectionError("the websocket connection was lost"))
                future.exception()  # retrieved: nobody may be waiting any more
        super().connection_lost(exc)
