"""The websocket server and the viewer.

Broadcaster (broadcast.py), protocol v1 (protocol.py), FastAPI app and background runner
(app.py), Prometheus metrics (metrics.py), static viewer (static/).

Import-light on purpose: names load on first use, so ``import rtdecode.server`` costs
nothing; ``rtdecode.server.create_app`` loads FastAPI and uvicorn.
The server never imports torch nor the worker: it receives ``contracts.Frame`` objects.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "create_app": "app",
    "run_server_in_thread": "app",
    "ServerHandle": "app",
    "FrameSource": "app",
    "Broadcaster": "broadcast",
    "PROTOCOL_VERSION": "protocol",
    "encode_frame": "protocol",
    "decode_frame": "protocol",
    "text_message": "protocol",
    "ProtocolError": "protocol",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
