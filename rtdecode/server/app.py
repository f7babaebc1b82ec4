"""The FastAPI app and its background runner.

Routes: /ws (frames), /api/status, /api/gallery/{id}, /health, /metrics and the viewer at
/; plus :func:`run_server_in_thread`, which runs it under uvicorn.

Threading
---------
* uvicorn's thread runs the asyncio loop. Coroutines here only move bytes: frames
  arrive already encoded (``Broadcaster.publish`` encodes on the producer's thread).
* Everything that calls the source (``status()``, ``health()``, ``gallery_thumbnail()``)
  runs in starlette's thread pool (sync routes, ``run_in_threadpool``), never on the loop,
  so a slow source cannot stall the frames.
* Each websocket has two tasks: a receiver (client requests) and a single sender (the
  only one that writes to that socket).

Shutdown order (``ServerHandle.stop``): stop accepting viewers, close every viewer with
1001, stop the Broadcaster, then let uvicorn stop. The lifespan's exit runs the same
steps; under a plain ``uvicorn`` command, uvicorn itself has closed the websockets
(code 1012) by then.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import socket
import threading
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from fastapi import Depends, FastAPI, HTTPException, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from rtdecode import __version__
from rtdecode.contracts import Frame
from rtdecode.server.broadcast import (
    Broadcaster,
    BroadcastSettings,
    Client,
    CloseRequest,
    Probe,
    TooManyClients,
)
from rtdecode.server.hosts import HostAllowlist, allowed_host_names
from rtdecode.server.metrics import CONTENT_TYPE_LATEST, ServerMetrics
from rtdecode.server.protocol import (
    CLOSE_FORBIDDEN_ORIGIN,
    CLOSE_GOING_AWAY,
    CLOSE_TRY_AGAIN_LATER,
    CLOSE_UNAUTHORIZED,
    HEALTH_STATES,
    MAX_CLIENT_FRAME_BYTES,
    MAX_CLIENT_MESSAGE_BYTES,
    PROBE_EXTENSION,
    PROTOCOL_VERSION,
    ProtocolError,
    error_message,
    jsonable,
    parse_client_message,
    text_message,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import uvicorn

log = logging.getLogger(__name__)

__all__ = ["FrameSource", "ServerHandle", "create_app", "run_server_in_thread", "STATIC_DIR"]

STATIC_DIR = Path(__file__).with_name("static")
#: Seconds between ``status`` messages to each viewer.
STATUS_INTERVAL_S = 1.0
#: Seconds the shutdown waits for viewers to acknowledge their close.
CLOSE_TIMEOUT_S = 3.0
#: A viewer whose socket accepts no data for this long is dropped (its slot is freed):
#: a frozen browser or a suspended laptop must not hold one of ``max_clients`` forever.
SEND_TIMEOUT_S = 20.0


class FrameSource(Protocol):
    """What the app needs from the service (``rtdecode.service.Service`` provides it).

    All three are called from starlette's thread pool, possibly concurrently with the
    worker: they must be thread-safe and should answer in milliseconds.
    """

    def status(self) -> dict[str, Any]:
        """JSON-able state for /api/status, /metrics and the viewer.

        Stream, model, rates, counters, latency percentiles. Numeric leaves become Prometheus
        metrics (see ``rtdecode.server.metrics``); the viewer reads ``stream``, ``model`` and
        counters named ``gaps`` and ``windows_skipped`` wherever they are nested.
        """
        ...

    def health(self) -> tuple[str, list[str]]:
        """``(state, reasons)`` with state one of starting, ready, degraded, error."""
        ...

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        """``(image bytes, mime)`` of a gallery image's thumbnail, None for unknown ids."""
        ...


class ServerSettings(BroadcastSettings, Protocol):
    """The options the app is built from (``rtdecode.config.Settings`` has them)."""

    @property
    def token(self) -> str | None:
        """Shared secret required by /ws and /api/*, or None for none."""
        ...

    @property
    def host(self) -> str:
        """The address the server binds (a name the Host allowlist accepts)."""
        ...

    @property
    def allowed_hosts(self) -> Sequence[str]:
        """More names the Host allowlist accepts."""
        ...


class _AppState:
    """Per-app server state: the Broadcaster, metrics, security checks, shutdown."""

    def __init__(
        self, settings: ServerSettings, source: FrameSource, status_interval_s: float
    ) -> None:
        self.settings = settings
        self.source = source
        self.status_interval_s = float(status_interval_s)
        self.token: str | None = settings.token or None
        self.metrics: ServerMetrics | None = None
        self.broadcaster = Broadcaster.from_settings(settings, on_frame=self._observe)
        self.metrics = ServerMetrics(
            lambda: self.broadcaster.stats, self.source_status, self.health
        )
        self.loop: asyncio.AbstractEventLoop | None = None
        self.accepting = False
        self._ticker: asyncio.Task[None] | None = None
        self._shutdown: asyncio.Task[None] | None = None

    def _observe(self, frame: Frame) -> None:
        if self.metrics is not None:
            self.metrics.observe_frame(frame)

    # -- security -----------------------------------------------------------------------
    def token_ok(self, query_token: str | None, authorization: str | None) -> bool:
        """True when the request carries the token, or when no token is configured.

        The token comes as ``?token=`` or ``Authorization: Bearer`` (constant-time comparison).
        """
        if not self.token:
            return True
        given = query_token
        if given is None and authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                given = value.strip()
        if given is None:
            return False
        return hmac.compare_digest(given.encode("utf-8"), self.token.encode("utf-8"))

    @staticmethod
    def origin_ok(origin: str | None, host: str | None) -> bool:
        """Same-host pages and clients without an Origin (not browsers) may connect."""
        if origin is None:
            return True
        netloc = urlsplit(origin).netloc.lower()
        return bool(netloc) and host is not None and netloc == host.lower()

    # -- lifecycle (loop) ---------------------------------------------------------------
    def start(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.broadcaster.start(self.loop)
        self.accepting = True
        self._ticker = asyncio.create_task(self._status_ticker(), name="rtdecode-status")

    async def shutdown(self, close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop accepting, close viewers with 1001, stop the Broadcaster (idempotent)."""
        if self._shutdown is None:
            self._shutdown = asyncio.ensure_future(self._do_shutdown(close_timeout_s))
        await asyncio.shield(self._shutdown)

    async def _do_shutdown(self, close_timeout_s: float) -> None:
        self.accepting = False
        self.broadcaster.close_all(CLOSE_GOING_AWAY, "server shutting down")
        if not await self.broadcaster.wait_closed(close_timeout_s):
            log.warning(
                "%d viewer(s) did not acknowledge the close within %.1f s.",
                len(self.broadcaster.clients),
                close_timeout_s,
            )
        self.broadcaster.stop()
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)

    def tell_viewers(self, type_: str, **fields: object) -> None:
        """Queue one JSON text message to every viewer.

        Safe from any thread; a no-op before the loop started or once it closed.
        """
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(
                self.broadcaster.broadcast_text, text_message(type_, **fields)
            )
        except RuntimeError:  # the loop closed meanwhile: the server is stopping
            pass

    # -- source access (thread pool) ----------------------------------------------------
    def health(self) -> tuple[str, list[str]]:
        if self._shutdown is not None:
            return "stopping", ["the server is shutting down"]
        try:
            state, reasons = self.source.health()
        except Exception as exc:
            log.exception("source.health() failed")
            return "error", [f"health check failed: {exc!r}"]
        if state not in HEALTH_STATES or state == "stopping":
            return "error", [f"source reported unknown health state {state!r}", *map(str, reasons)]
        return str(state), [str(r) for r in reasons]

    def source_status(self) -> dict[str, Any]:
        try:
            return jsonable(self.source.status())
        except Exception as exc:
            log.exception("source.status() failed")
            return {"error": f"status failed: {exc!r}"}

    def status_payload(self) -> dict[str, Any]:
        state, reasons = self.health()
        return {
            "v": PROTOCOL_VERSION,
            "health": {"state": state, "reasons": reasons},
            "server": self.broadcaster.stats.as_dict(),
            "source": self.source_status(),
        }

    async def _status_ticker(self) -> None:
        """Push a ``status`` message to every viewer once per interval."""
        while True:
            await asyncio.sleep(self.status_interval_s)
            if not self.broadcaster.clients:
                continue
            state, reasons = await run_in_threadpool(self.health)
            source = await run_in_threadpool(self.source_status)
            server = self.broadcaster.stats
            summary = {k: getattr(server, k) for k in ("n_clients", "published", "sent", "dropped")}
            for client in self.broadcaster.clients:
                client.send_status(
                    text_message(
                        "status",
                        t_server=time.monotonic(),
                        health={"state": state, "reasons": reasons},
                        client=client.stats.as_dict(),
                        server=summary,
                        source=source,
                    )
                )

    # -- websocket ----------------------------------------------------------------------
    async def serve_websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        refusal = self._refusal(websocket)
        if refusal is not None:
            await _refuse(websocket, *refusal)
            return
        peer = f"{websocket.client.host}:{websocket.client.port}" if websocket.client else ""
        try:
            client = self.broadcaster.add_client(peer)
        except TooManyClients as exc:
            await _refuse(websocket, CLOSE_TRY_AGAIN_LATER, "too_many_clients", str(exc))
            return
        try:
            client.send_control(
                text_message(
                    "hello",
                    client_id=client.id,
                    server="rtdecode",
                    version=__version__,
                    protocol=PROTOCOL_VERSION,
                    client_queue=self.broadcaster.client_queue,
                    max_clients=self.broadcaster.max_clients,
                    status_interval_s=self.status_interval_s,
                    max_message_bytes=MAX_CLIENT_MESSAGE_BYTES,
                )
            )
            sender = asyncio.create_task(_send_loop(websocket, client))
            receiver = asyncio.create_task(_receive_loop(websocket, client))
            try:
                await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (sender, receiver):
                    task.cancel()
                await asyncio.gather(sender, receiver, return_exceptions=True)
        finally:
            self.broadcaster.remove_client(client)

    def _refusal(self, websocket: WebSocket) -> tuple[int, str, str] | None:
        headers = websocket.headers
        if not self.accepting:
            return (
                CLOSE_GOING_AWAY,
                "shutting_down",
                "The server is shutting down; reconnect later.",
            )
        if not self.origin_ok(headers.get("origin"), headers.get("host")):
            return (
                CLOSE_FORBIDDEN_ORIGIN,
                "forbidden_origin",
                f"Origin {headers.get('origin')!r} is not this server ({headers.get('host')!r}); "
                "open the viewer from the server itself.",
            )
        if not self.token_ok(websocket.query_params.get("token"), headers.get("authorization")):
            return (
                CLOSE_UNAUTHORIZED,
                "unauthorized",
                "Missing or wrong token; add ?token=YOUR_TOKEN to the URL or send "
                "'Authorization: Bearer YOUR_TOKEN'.",
            )
        return None


async def _refuse(websocket: WebSocket, code: int, error_code: str, message: str) -> None:
    """Tell an accepted websocket why it is refused, then close it with ``code``."""
    try:
        await websocket.send_text(error_message(error_code, message, close_code=code))
        await websocket.close(code, error_code)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left already


async def _send_loop(websocket: WebSocket, client: Client) -> None:
    probe = websocket.scope.get("extensions", {}).get(PROBE_EXTENSION, {}).get("ping")
    client.can_probe = probe is not None
    try:
        while True:
            message = await client.next_message()
            if isinstance(message, Probe):
                client.probe_sent(probe())
                continue
            if isinstance(message, CloseRequest):
                await asyncio.wait_for(
                    websocket.close(message.code, message.reason), SEND_TIMEOUT_S
                )
                return
            if isinstance(message, bytes):
                send = websocket.send_bytes(message)
            else:
                send = websocket.send_text(message)
            # uvicorn's send waits while the socket is full; only a dead peer waits this long.
            await asyncio.wait_for(send, SEND_TIMEOUT_S)
    except TimeoutError:
        log.warning(
            "Viewer %s (%s) accepted no data for %.0f s; dropping it.",
            client.id,
            client.peer,
            SEND_TIMEOUT_S,
        )
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:
        log.debug("viewer %s: send ended: %r", client.id, exc)


async def _receive_loop(websocket: WebSocket, client: Client) -> None:
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("text")
            if data is None:
                data = message.get("bytes")
            try:
                request = parse_client_message(data)
            except ProtocolError as exc:
                client.send_control(error_message(exc.code, str(exc)))
                continue
            if request.type == "ping":
                client.send_control(text_message("pong", t_server=time.monotonic(), id=request.id))
            elif request.type == "set_rate":
                client.set_rate(request.max_fps)
                client.send_control(text_message("rate", max_fps=request.max_fps))
            elif request.type == "ack":
                client.ack(request.seq)
    except (WebSocketDisconnect, RuntimeError, OSError) as exc:
        log.debug("viewer %s: receive ended: %r", client.id, exc)


def create_app(
    settings: ServerSettings, source: FrameSource, *, status_interval_s: float = STATUS_INTERVAL_S
) -> FastAPI:
    """Build the server app.

    Parameters
    ----------
    settings : rtdecode.config.Settings
        Uses ``token``, ``max_clients``, ``client_queue``, and ``host`` and
        ``allowed_hosts`` for the Host allowlist (``rtdecode.server.hosts``).
    source : FrameSource
        Status, health and gallery thumbnails (see :class:`FrameSource`).
    status_interval_s : float
        Seconds between ``status`` messages to each viewer.

    Returns
    -------
    FastAPI
        ``app.state.broadcaster`` is the :class:`~rtdecode.server.broadcast.Broadcaster`
        to publish frames to (from any thread); ``app.state.server`` holds the rest.
    """
    state = _AppState(settings, source, status_interval_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start()
        try:
            yield
        finally:
            await state.shutdown()

    app = FastAPI(
        title="rtdecode",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.broadcaster = state.broadcaster
    app.state.server = state

    def require_token(request: Request) -> None:
        if not state.token_ok(
            request.query_params.get("token"), request.headers.get("authorization")
        ):
            raise HTTPException(
                status_code=401,
                detail="Missing or wrong token; add ?token=YOUR_TOKEN or send "
                "'Authorization: Bearer YOUR_TOKEN'.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    guarded = [Depends(require_token)]

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await state.serve_websocket(websocket)

    @app.get("/health")
    def health() -> JSONResponse:
        s, reasons = state.health()
        return JSONResponse(
            {"v": PROTOCOL_VERSION, "state": s, "reasons": reasons},
            status_code=200 if s == "ready" else 503,
            headers={"Cache-Control": "no-store"},
        )

    @app.get("/api/status", dependencies=guarded)
    def api_status() -> JSONResponse:
        return JSONResponse(state.status_payload(), headers={"Cache-Control": "no-store"})

    @app.get("/api/gallery/{image_id:path}", dependencies=guarded)
    def gallery_thumbnail(image_id: str) -> Response:
        found = state.source.gallery_thumbnail(image_id)
        if found is None:
            raise HTTPException(
                status_code=404,
                detail=f"No gallery image with id {image_id!r}; ids come from a frame's topk or true_id.",
            )
        data, mime = found
        return Response(content=data, media_type=mime, headers={"Cache-Control": "max-age=300"})

    @app.get("/api/names", dependencies=guarded)
    def image_names() -> JSONResponse:
        # Optional on a FrameSource (added in v1): sources without it have no names.
        names = getattr(state.source, "image_names", None)
        return JSONResponse(
            {"v": PROTOCOL_VERSION, "names": names() if names is not None else {}},
            headers={"Cache-Control": "max-age=300"},
        )

    @app.get("/metrics", dependencies=guarded)
    def metrics() -> Response:
        assert state.metrics is not None
        return Response(content=state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    # Last: the viewer's files answer every path no route above took.
    app.mount("/", StaticFiles(directory=STATIC_DIR, html=True), name="viewer")
    # Around everything, websockets included: a foreign Host is refused (DNS rebinding).
    app.add_middleware(
        HostAllowlist,
        allowed=allowed_host_names(settings.host, settings.allowed_hosts or ()),
    )
    return app


class ServerHandle:
    """A uvicorn server running in a background thread (see :func:`run_server_in_thread`).

    Attributes
    ----------
    host : str
    port : int
        The bound port (the real one when 0 was asked for).
    url, ws_url : str
        ``http://host:port/`` and ``ws://host:port/ws``.
    """

    def __init__(
        self, app: FastAPI, server: uvicorn.Server, thread: threading.Thread, host: str, port: int
    ) -> None:
        self.app = app
        self.server = server
        self.thread = thread
        self.host = host
        self.port = port
        self._stopped = False

    @property
    def url(self) -> str:
        """The viewer's HTTP address."""
        return f"http://{_url_host(self.host)}:{self.port}/"

    @property
    def ws_url(self) -> str:
        """The websocket address viewers connect to."""
        return f"ws://{_url_host(self.host)}:{self.port}/ws"

    def tell_viewers(self, type_: str, **fields: object) -> None:
        """Send one JSON text message (``{"v", "type", **fields}``) to every viewer.

        Safe from any thread; does nothing before the server started or once it stopped.
        """
        state: _AppState | None = getattr(self.app.state, "server", None)
        if state is not None:
            state.tell_viewers(type_, **fields)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Shut down in order and join the thread.

        Viewers are closed with 1001, then the Broadcaster and uvicorn are stopped.

        Raises
        ------
        RuntimeError
            If the server thread is still alive after ``timeout_s``.
        """
        if self._stopped:
            return
        self._stopped = True
        state: _AppState | None = getattr(self.app.state, "server", None)
        loop = None if state is None else state.loop
        if (
            state is not None
            and loop is not None
            and self.thread.is_alive()
            and not loop.is_closed()
        ):
            future = asyncio.run_coroutine_threadsafe(state.shutdown(), loop)
            try:
                future.result(timeout=CLOSE_TIMEOUT_S + 2.0)
            except Exception as exc:  # keep going: uvicorn's own shutdown still runs
                log.warning("Ordered shutdown of the viewers failed: %r", exc)
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(2.0)
        if self.thread.is_alive():
            raise RuntimeError(
                f"The server thread on port {self.port} did not stop within {timeout_s} s."
            )

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedactTokens(logging.Filter):
    """Blank ``?token=...`` and ``Bearer ...`` in log records.

    uvicorn logs websocket handshakes with their query string
    (``"WebSocket /ws?token=..." [accepted]`` at INFO, the request line at DEBUG), and a token
    must never reach a log file.
    """

    _SECRET = re.compile(r"((?:token=|[Bb]earer\s+))[^\s&\"',;]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._SECRET.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_REDACT = RedactTokens()
#: Loggers of the HTTP/websocket stack that may print request lines or headers.
_SERVER_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server")


def _redact_server_logs() -> None:
    """Attach the token filter to the server stack's loggers (once per process)."""
    for name in _SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def _url_host(host: str) -> str:
    if host in {"0.0.0.0", ""}:
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def run_server_in_thread(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    log_level: str = "warning",
    ws_ping_interval_s: float = 10.0,
    ws_ping_timeout_s: float = 10.0,
    startup_timeout_s: float = 15.0,
) -> ServerHandle:
    """Run ``app`` under uvicorn in a daemon thread and wait until it listens.

    Parameters
    ----------
    app : FastAPI
    host : str
    port : int
        0 picks a free port; read it from the handle's ``port``.
    log_level : str
        uvicorn's log level (the app's logging configuration is left alone).
    ws_ping_interval_s, ws_ping_timeout_s : float
        Websocket keepalive: a viewer that does not answer a ping within the timeout is
        disconnected (close code 1011), freeing its slot.
    startup_timeout_s : float

    Returns
    -------
    ServerHandle
        ``.port``, ``.url``, ``.ws_url``, ``.stop()``.

    Raises
    ------
    RuntimeError
        When the server does not start (port in use, lifespan failure, timeout).
    """
    import uvicorn

    from rtdecode.server.probe import ProbingWebSocketProtocol

    _redact_server_logs()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        log_config=None,
        access_log=False,
        lifespan="on",
        ws_max_size=MAX_CLIENT_FRAME_BYTES,
        ws_ping_interval=ws_ping_interval_s,
        ws_ping_timeout=ws_ping_timeout_s,
        # uvicorn's websockets protocol plus pings the app can await: flow control for
        # clients that never ack (rtdecode.server.probe).
        ws=ProbingWebSocketProtocol,
        timeout_graceful_shutdown=5,
    )
    ready = threading.Event()
    failure: list[BaseException] = []

    class _Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            try:
                await super().startup(sockets)
            finally:
                ready.set()

    server = _Server(config)

    def target() -> None:
        try:
            server.run()
        except BaseException as exc:  # uvicorn reports bind failures with SystemExit
            failure.append(exc)
        finally:
            ready.set()

    thread = threading.Thread(target=target, name=f"rtdecode-server-{host}:{port}", daemon=True)
    thread.start()
    if not ready.wait(startup_timeout_s):
        server.should_exit = True
        raise RuntimeError(
            f"The server on {host}:{port} did not start within {startup_timeout_s} s."
        )
    if failure or not server.started or not server.servers:
        thread.join(5.0)
        why = f" ({failure[0]!r})" if failure else ""
        raise RuntimeError(
            f"The server could not start on {host}:{port}{why}; is the port already in use? "
            "Pick another --port, or 0 for any free port."
        )
    bound_port = int(server.servers[0].sockets[0].getsockname()[1])
    return ServerHandle(app, server, thread, host, bound_port)
