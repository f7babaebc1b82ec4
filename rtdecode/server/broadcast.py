"""Broadcaster: fan decoded frames out to every connected viewer.

Threading
---------
* :meth:`Broadcaster.publish` runs on the producer's thread (the DecodeWorker). It
  encodes the frame there (so the asyncio loop only moves bytes), appends it to a small
  hand-off deque under a lock and, when no hand-off is pending already, schedules one
  drain on the loop with ``loop.call_soon_threadsafe``. It never blocks on clients; a
  loop that falls behind loses the oldest hand-offs, and those are counted.
* Everything else (clients, their queues, their counters) belongs to the asyncio loop
  and is touched only from it. ``stats`` may be read from any thread: it copies ints.

Each client has its own bounded queue (``client_queue`` frames). When a client reads
too slowly its queue fills and its *oldest* frame is dropped and counted for that client
alone; nobody else waits. Clients may ask for a lower rate (``set_rate``): frames above
that rate are skipped for that client (counted as ``skipped``, not as dropped).

Flow control. A client that acks (the viewer) has at most ``ACK_WINDOW`` frames in
flight. A client that never acks is *probed* when the server offers pings
(:mod:`rtdecode.server.probe`): one message, then two websocket pings, one after the
other's pong, and nothing more until the second pong. A client's websocket layer answers
a ping when it reads it, and it reads no further while the messages it has taken in wait
for the application (up to its read-ahead), so the second pong, sent after the first had
reached the server, comes only once the client has room again (the first may share a
read with the message). The next message is then the newest frame (older ones are
dropped, counted). So what sits between the server and such a client is one message, and
a frame it reads is as old as its read interval times one plus what its own library
reads ahead. A probed client that leaves a ping unanswered for ``STALL_S`` is closed
(1008, ``stalled``); it gets a ``status`` at most every ``PROBED_STATUS_S``, and learns of
its drops from those (``client.dropped``) and the frames' ``seq``, not from ``gap``
messages, which would take the places of frames.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

from rtdecode.contracts import Frame
from rtdecode.server.protocol import CLOSE_STALLED, encode_frame, text_message

log = logging.getLogger(__name__)

__all__ = [
    "Broadcaster",
    "BroadcastSettings",
    "BroadcasterStats",
    "Client",
    "ClientStats",
    "CloseRequest",
    "EncodedFrame",
    "PROBE",
    "Probe",
    "TooManyClients",
]

#: Control messages (hello, pong, errors, status) buffered per client; a client that
#: floods requests without reading loses the oldest replies, never server memory.
CONTROL_QUEUE = 32
#: A frame passes the rate limit with 90% of a credit, so jitter in the producer's
#: timing does not halve the rate a client asked for.
_RATE_TOLERANCE = 0.9


#: Frames a client that acknowledges frames may have in flight (sent, not yet acked).
#: Without this bound, kernel socket buffers hold minutes of frames for a slow viewer
#: and the bounded queue never drops: the viewer sees stale frames instead.
ACK_WINDOW = 2
#: A frame older than this (since the producer published it) is never sent: it is
#: dropped at send time, counted in ``dropped`` and ``stale``, and reported in the next
#: ``gap`` message. It bounds the age of what leaves the server; what the kernel's and
#: the client's buffers hold after that is bounded by acks only (docs/reliability.md).
MAX_FRAME_AGE_S = 1.0
#: A client that never acks and leaves the ping after its last message unanswered this
#: long is stalled: it is closed with 1008 (``stalled``) and its slot freed.
STALL_S = 10.0
#: Pings, each after the previous one's pong, before a probed client's next message.
PROBES_PER_MESSAGE = 2
#: A probed client gets a status message at most this often (each takes a frame's place).
PROBED_STATUS_S = 5.0


@dataclass(frozen=True, slots=True)
class Probe:
    """Returned by :meth:`Client.next_message`: send a ping and report its pong.

    The sender calls ``ping()`` of the websocket's probe extension and hands the future
    to :meth:`Client.probe_sent`.
    """


PROBE = Probe()


class TooManyClients(RuntimeError):
    """Raised by :meth:`Broadcaster.add_client` when ``max_clients`` are connected."""


@dataclass(frozen=True, slots=True)
class CloseRequest:
    """Returned by :meth:`Client.next_message` when the connection must be closed."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class EncodedFrame:
    """A frame as sent: its ``seq`` and the binary websocket message."""

    seq: int
    message: bytes
    #: Local monotonic clock when it was published (its age is measured from here).
    t_created: float = field(default_factory=time.monotonic)


@dataclass(frozen=True, slots=True)
class ClientStats:
    """Counters of one viewer connection (a snapshot).

    Attributes
    ----------
    id : str
        The connection's name on this server (``c1``, ``c2``...).
    peer : str
        The client's address.
    connected_s : float
        Seconds since it connected.
    max_fps : float | None
        The frame rate it asked for (None: as fast as frames come).
    sent, dropped, skipped : int
        Frames sent, dropped from its full queue, and passed over to keep to ``max_fps``.
    queued : int
        Frames waiting in its queue.
    acked_seq : int | None
        The latest frame sequence number it acknowledged.
    control_dropped, status_replaced : int
        Control replies dropped from its full control queue; status messages replaced by
        a newer one before they were sent.
    stale : int
        Frames sent later than the staleness limit.
    flow : str
        How the server paces it: ``"ack"`` (it acks), ``"probe"`` (it never acked; one
        message per answered ping) or ``"none"`` (no acks and no pings: socket buffers).
    probes : int
        Pings sent to pace it (``flow == "probe"``).
    probe_rtt_ms : float | None
        The last probe's round trip: how long it took the client to read past a message.
    """

    id: str
    peer: str
    connected_s: float
    max_fps: float | None
    sent: int
    dropped: int
    skipped: int
    queued: int
    acked_seq: int | None
    control_dropped: int
    status_replaced: int
    stale: int
    flow: str
    probes: int
    probe_rtt_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        """The counters as a JSON-able dict (for /api/status and the status message)."""
        return asdict(self)


@dataclass(slots=True)
class _FrameCounts:
    """Frames sent, dropped and skipped: the totals of clients that have left, or of all."""

    sent: int = 0
    dropped: int = 0
    skipped: int = 0

    def add(self, sent: int, dropped: int, skipped: int) -> None:
        """Count one client's frames in."""
        self.sent += sent
        self.dropped += dropped
        self.skipped += skipped


@dataclass(frozen=True, slots=True)
class BroadcasterStats:
    """Totals and per-client counters of a Broadcaster (a snapshot).

    Attributes
    ----------
    running : bool
        The broadcaster's loop is serving.
    published, handoff_dropped, unserved : int
        Frames handed in by the worker, dropped at the hand-off to the event loop, and
        published while no client was connected.
    n_clients, max_clients, client_queue : int
        Clients connected now, the most allowed, and frames queued per client at most.
    connections, rejected : int
        Connections accepted and refused (too many clients) so far.
    sent, dropped, skipped : int
        Totals over all clients, past and present.
    clients : list of ClientStats
        One entry per connected client.
    """

    running: bool
    published: int
    handoff_dropped: int
    unserved: int
    n_clients: int
    max_clients: int
    client_queue: int
    connections: int
    rejected: int
    sent: int
    dropped: int
    skipped: int
    clients: list[ClientStats]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-able dict (for /api/status and /metrics)."""
        return asdict(self)


class Client:
    """One connected viewer: a bounded frame queue, a control queue and counters.

    Lives on the asyncio loop. The websocket handler calls :meth:`next_message` from its
    single sender task and :meth:`send_control` / :meth:`set_rate` from its receiver.

    Attributes
    ----------
    id : str
        ``c1``, ``c2``... unique within the Broadcaster.
    peer : str
        Remote address, for logs and /api/status.
    sent, dropped, skipped : int
        Frames handed to the transport; frames lost because the queue was full
        (oldest first); frames left out because of the client's ``max_fps``.
    """

    def __init__(
        self, client_id: str, peer: str, queue_size: int, max_frame_age_s: float = MAX_FRAME_AGE_S
    ) -> None:
        self.id = client_id
        self.peer = peer
        self.t_connected = time.monotonic()
        self.max_fps: float | None = None
        self.sent = 0
        self.dropped = 0
        self.skipped = 0
        self.control_dropped = 0
        self.stale = 0  # frames dropped at send time for being older than max_frame_age_s
        self.max_frame_age_s = float(max_frame_age_s)
        self._frames: deque[EncodedFrame] = deque(maxlen=queue_size)
        self._control: deque[str] = deque(maxlen=CONTROL_QUEUE)
        # The newest status snapshot not yet sent (an older one is outdated: replaced).
        self._status: str | None = None
        self.status_replaced = 0
        self._wake = asyncio.Event()
        self._unreported_drops = 0
        self._credit = 1.0
        self._t_last_offer: float | None = None
        self._close: CloseRequest | None = None
        # Flow control, on once the client sends its first ack (the viewer does).
        self.acked_seq: int | None = None
        self._last_sent_seq: int | None = None
        # Until then, pings when the server offers them (see the module docstring).
        self.can_probe = False
        self.probes = 0
        self.probe_rtt_ms: float | None = None
        self._probe_due = 0  # pings still to send before the next message
        self._t_status: float | None = None  # when the last status went out
        self._probe_out: float | None = None  # when the unanswered ping was sent

    # -- loop side, called by the Broadcaster -------------------------------------------
    def offer(self, item: EncodedFrame, now: float) -> None:
        """Queue a frame for this client, applying its rate limit and drop-oldest."""
        if self._close is not None:
            return
        if self.max_fps is not None:
            # Credit-based limiter: one credit per 1/max_fps seconds, at most one banked,
            # so a stalled producer that bursts does not burst to this client.
            if self._t_last_offer is not None:
                self._credit = min(1.0, self._credit + (now - self._t_last_offer) * self.max_fps)
            self._t_last_offer = now
            if self._credit < _RATE_TOLERANCE:
                self.skipped += 1
                return
            self._credit -= 1.0
        if len(self._frames) == self._frames.maxlen:
            self.dropped += 1
            self._unreported_drops += 1
        self._frames.append(item)  # a full deque drops its oldest entry
        self._wake.set()

    def send_control(self, text: str) -> None:
        """Queue a JSON text message (sent before any queued frame)."""
        if len(self._control) == self._control.maxlen:
            self.control_dropped += 1
        self._control.append(text)
        self._wake.set()

    def send_status(self, text: str) -> None:
        """Queue a status snapshot, replacing one still waiting (newest wins).

        Like frames, it waits for room in the ack window, so a slow acking client gets
        at most one status per frame it takes in instead of a backlog of them.
        """
        if self._status is not None:
            self.status_replaced += 1
        self._status = text
        self._wake.set()

    def request_close(self, code: int, reason: str) -> None:
        """Ask the sender to close the connection once queued control messages are out."""
        if self._close is None:
            self._close = CloseRequest(code, reason)
            self._frames.clear()
            self._wake.set()

    def ack(self, seq: int) -> None:
        """The client has taken in frame ``seq``: frames up to ACK_WINDOW past it may go."""
        if self.acked_seq is None or seq > self.acked_seq:
            self.acked_seq = seq
            self._wake.set()

    def _drop_stale(self, now: float) -> None:
        while self._frames and now - self._frames[0].t_created > self.max_frame_age_s:
            self._frames.popleft()
            self.stale += 1
            self.dropped += 1
            self._unreported_drops += 1

    def _window_full(self) -> bool:
        if self.acked_seq is None or self._last_sent_seq is None:
            return False
        return self._last_sent_seq - self.acked_seq >= ACK_WINDOW

    @property
    def flow(self) -> str:
        """``"ack"``, ``"probe"`` or ``"none"`` (see :class:`ClientStats`)."""
        if self.acked_seq is not None:
            return "ack"
        return "probe" if self.can_probe else "none"

    def probe_sent(self, pong: asyncio.Future[float]) -> None:
        """The sender pinged for this client; ``pong`` completes with the round trip (s)."""
        self.probes += 1
        self._probe_out = time.monotonic()
        pong.add_done_callback(self._pong)

    def _pong(self, pong: asyncio.Future[float]) -> None:
        if pong.cancelled() or pong.exception() is not None:
            return  # the connection is gone; its handler ends the client
        self.probe_rtt_ms = round(pong.result() * 1e3, 3)
        self._probe_out = None
        self._wake.set()

    def _sent(self) -> None:
        # A message went out: a probed client gets a ping before the next one.
        if self.flow == "probe":
            self._probe_due = PROBES_PER_MESSAGE

    def set_rate(self, max_fps: float | None) -> None:
        """Limit this client to ``max_fps`` frames per second (None: the full rate)."""
        self.max_fps = max_fps
        self._credit = 1.0
        self._t_last_offer = None

    async def next_message(self) -> bytes | str | CloseRequest | Probe:
        """Wait for the next thing to send.

        A control text, a gap notice, a frame (bytes), :data:`PROBE` (send a ping, then
        call :meth:`probe_sent`), or a :class:`CloseRequest` after which nothing else is
        returned.
        """
        while True:
            message = self._next(time.monotonic())
            if message is not None:
                if not isinstance(message, (Probe, CloseRequest)):
                    self._sent()
                return message
            self._wake.clear()
            if self._probe_out is None:
                await self._wake.wait()
            else:  # wake up in time to declare the stall
                timeout = max(0.0, self._probe_out + STALL_S - time.monotonic()) + 0.01
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout)
                except TimeoutError:
                    pass

    def _next(self, now: float) -> bytes | str | CloseRequest | Probe | None:
        if self._close is not None:  # the queued replies (the reason), then the close
            return self._control.popleft() if self._control else self._close
        probing = self.flow == "probe"
        if probing and self._probe_out is not None:
            if now - self._probe_out > STALL_S:
                self.request_close(
                    CLOSE_STALLED,
                    f"stalled: no pong for {STALL_S:.0f} s; read the socket or send acks",
                )
                return self._close
            return None  # everything waits for the client to read past its last message
        if probing and self._probe_due:
            self._probe_due -= 1
            return PROBE
        if self._control:
            return self._control.popleft()
        self._drop_stale(now)
        if self._window_full():
            return None  # frames and status wait for an ack
        if self._status is not None and not (
            probing and self._t_status is not None and now - self._t_status < PROBED_STATUS_S
        ):
            text, self._status = self._status, None
            self._t_status = now
            return text
        if not self._frames:
            return None
        if probing:
            # One message per answered ping: the newest frame; the older ones are
            # dropped. Their count reaches the client in its status messages
            # (client.dropped) and its seq jumps, not as gap messages, which would
            # take the place of frames.
            while len(self._frames) > 1:
                self._frames.popleft()
                self.dropped += 1
            self._unreported_drops = 0
        elif self._unreported_drops:
            n, self._unreported_drops = self._unreported_drops, 0
            return text_message(
                "gap",
                dropped=n,
                dropped_total=self.dropped,
                stale_total=self.stale,
                next_seq=self._frames[0].seq,
            )
        self.sent += 1
        item = self._frames.popleft()
        self._last_sent_seq = item.seq
        return item.message

    @property
    def stats(self) -> ClientStats:
        """Counters of this client (a snapshot)."""
        return ClientStats(
            id=self.id,
            peer=self.peer,
            connected_s=round(time.monotonic() - self.t_connected, 3),
            max_fps=self.max_fps,
            sent=self.sent,
            dropped=self.dropped,
            skipped=self.skipped,
            queued=len(self._frames),
            acked_seq=self.acked_seq,
            control_dropped=self.control_dropped,
            status_replaced=self.status_replaced,
            stale=self.stale,
            flow=self.flow,
            probes=self.probes,
            probe_rtt_ms=self.probe_rtt_ms,
        )


class BroadcastSettings(Protocol):
    """The options a Broadcaster is built from (``rtdecode.config.Settings`` has them)."""

    @property
    def client_queue(self) -> int:
        """Frames buffered per client before its oldest is dropped."""
        ...

    @property
    def max_clients(self) -> int:
        """Most clients connected at once."""
        ...


class Broadcaster:
    """Fan frames out to clients, each with its own bounded queue.

    Parameters
    ----------
    client_queue : int
        Frames buffered per client before its oldest is dropped (``Settings.client_queue``).
    max_clients : int
        Connected clients allowed at once (``Settings.max_clients``).
    max_frame_age_s : float
        Frames older than this (seconds since :meth:`publish`) are dropped at send time.
    handoff_size : int
        Frames waiting between :meth:`publish` and the loop; more means the loop is
        stalled, and the oldest are dropped (counted in ``handoff_dropped``).
    on_frame : callable, optional
        ``on_frame(frame)`` is called on the publishing thread for every frame (metrics);
        its exceptions are logged, never raised into the producer.
    """

    def __init__(
        self,
        *,
        client_queue: int = 4,
        max_clients: int = 16,
        handoff_size: int = 8,
        max_frame_age_s: float = MAX_FRAME_AGE_S,
        on_frame: Callable[[Frame], None] | None = None,
    ) -> None:
        if client_queue < 1 or max_clients < 1 or handoff_size < 1:
            raise ValueError(
                f"client_queue={client_queue}, max_clients={max_clients} and "
                f"handoff_size={handoff_size} must all be at least 1."
            )
        self.client_queue = int(client_queue)
        self.max_frame_age_s = float(max_frame_age_s)
        self.max_clients = int(max_clients)
        self.on_frame = on_frame
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._handoff: deque[EncodedFrame] = deque(maxlen=handoff_size)
        self._drain_scheduled = False
        self._stopped = False
        self._clients: dict[str, Client] = {}
        self._all_gone = asyncio.Event()
        self._all_gone.set()
        self._next_id = 1
        # Publisher-side counters (under _lock).
        self.published = 0
        self.handoff_dropped = 0
        self.unserved = 0  # published while no loop was running (before start/after stop)
        # Loop-side counters, including clients that have left.
        self.connections = 0
        self.rejected = 0
        self._gone = _FrameCounts()

    @classmethod
    def from_settings(
        cls, settings: BroadcastSettings, *, on_frame: Callable[[Frame], None] | None = None
    ) -> Broadcaster:
        """Build from ``rtdecode.config.Settings`` (``client_queue``, ``max_clients``)."""
        return cls(client_queue=settings.client_queue, max_clients=settings.max_clients,
                   on_frame=on_frame)

    # -- lifecycle (loop) ---------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Attach to the running loop (call from the loop, e.g. in the app's lifespan)."""
        with self._lock:
            self._loop = loop or asyncio.get_running_loop()
            self._stopped = False

    def stop(self) -> None:
        """Detach from the loop: later :meth:`publish` calls are counted as unserved."""
        with self._lock:
            self._stopped = True
            self._loop = None
            self.unserved += len(self._handoff)
            self._handoff.clear()

    @property
    def running(self) -> bool:
        """True between the loop's start and ``stop``."""
        return self._loop is not None and not self._stopped

    # -- producer side (any thread) -----------------------------------------------------
    def publish(self, frame: Frame) -> bool:
        """Hand one frame to every connected client; never blocks.

        Parameters
        ----------
        frame : Frame

        Returns
        -------
        bool
            False when the server is not running (the frame reached nobody).
        """
        if self.on_frame is not None:
            try:
                self.on_frame(frame)
            except Exception:  # metrics must never stop the producer
                log.exception("on_frame observer failed for frame seq=%s", frame.seq)
        with self._lock:
            self.published += 1
            if self._loop is None or self._stopped:
                self.unserved += 1
                return False
        if not self._clients:
            # Nobody to send to: skip the encoding (a client connecting right now simply
            # starts with the next frame). Reading the dict's size from here is safe.
            return True
        item = EncodedFrame(int(frame.seq), encode_frame(frame))  # outside the lock
        with self._lock:
            loop = self._loop
            if loop is None or self._stopped:  # stopped while we were encoding
                self.unserved += 1
                return False
            if len(self._handoff) == self._handoff.maxlen:
                self.handoff_dropped += 1
            self._handoff.append(item)
            if self._drain_scheduled:
                return True
            self._drain_scheduled = True
        try:
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop closed between our check and the call
            with self._lock:
                self.unserved += len(self._handoff)
                self._handoff.clear()
                self._drain_scheduled = False
            return False
        return True

    def _drain(self) -> None:
        with self._lock:
            items = list(self._handoff)
            self._handoff.clear()
            self._drain_scheduled = False
        now = time.monotonic()
        for item in items:
            for client in self._clients.values():
                client.offer(item, now)

    # -- clients (loop) -----------------------------------------------------------------
    def add_client(self, peer: str = "") -> Client:
        """Register a client.

        Raises
        ------
        TooManyClients
            When ``max_clients`` clients are connected already.
        """
        if len(self._clients) >= self.max_clients:
            self.rejected += 1
            raise TooManyClients(
                f"The server already has {len(self._clients)} viewers, its limit "
                f"(max_clients={self.max_clients}); close another viewer or raise "
                "RTDECODE_MAX_CLIENTS."
            )
        client = Client(f"c{self._next_id}", peer, self.client_queue, self.max_frame_age_s)
        self._next_id += 1
        self._clients[client.id] = client
        self._all_gone.clear()
        self.connections += 1
        return client

    def remove_client(self, client: Client) -> None:
        """Forget a client, keeping its counters in the totals."""
        if self._clients.pop(client.id, None) is not None:
            self._gone.add(client.sent, client.dropped, client.skipped)
        if not self._clients:
            self._all_gone.set()

    @property
    def clients(self) -> list[Client]:
        """The connected clients (a snapshot)."""
        return list(self._clients.values())

    def broadcast_text(self, text: str) -> None:
        """Queue one JSON text message to every client (loop)."""
        for client in self._clients.values():
            client.send_control(text)

    def close_all(self, code: int, reason: str) -> None:
        """Ask every client's sender to close its connection with ``code`` (loop)."""
        for client in self._clients.values():
            client.request_close(code, reason)

    async def wait_closed(self, timeout_s: float) -> bool:
        """Wait until every client has been removed; True if they all left in time."""
        try:
            await asyncio.wait_for(self._all_gone.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    @property
    def stats(self) -> BroadcasterStats:
        """Totals and per-client counters (a snapshot; safe to read from any thread)."""
        clients = [c.stats for c in list(self._clients.values())]
        totals = replace(self._gone)
        for c in clients:
            totals.add(c.sent, c.dropped, c.skipped)
        with self._lock:
            published, handoff_dropped, unserved = (
                self.published,
                self.handoff_dropped,
                self.unserved,
            )
        return BroadcasterStats(
            running=self.running,
            published=published,
            handoff_dropped=handoff_dropped,
            unserved=unserved,
            n_clients=len(clients),
            max_clients=self.max_clients,
            client_queue=self.client_queue,
            connections=self.connections,
            rejected=self.rejected,
            sent=totals.sent,
            dropped=totals.dropped,
            skipped=totals.skipped,
            clients=clients,
        )
