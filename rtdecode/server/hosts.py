"""Host allowlist: refuse requests that name a foreign ``Host`` (DNS rebinding).

A page on ``evil.example`` whose DNS record is switched to 127.0.0.1 ("DNS rebinding")
reaches a loopback server from a visitor's browser as a same-origin request: its
``Origin`` and ``Host`` both say ``evil.example``, so comparing the two proves nothing.
What gives it away is the ``Host`` header: the server is not ``evil.example``. So every
HTTP request and every websocket handshake must name one of

* a loopback name: ``127.0.0.1``, ``localhost``, ``::1`` (written ``[::1]``);
* the host the server was configured with (``--host``), unless it is a wildcard bind
  (``0.0.0.0``, ``::``);
* a name given with ``--allowed-hosts`` / ``RTDECODE_ALLOWED_HOSTS`` (``*`` allows any);

with any port. Anything else (a missing Host included) gets HTTP 400, or a websocket
``error`` message ``forbidden_host`` followed by close code 4400.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from rtdecode.server.protocol import CLOSE_FORBIDDEN_HOST, error_message

__all__ = ["LOOPBACK_HOSTS", "HostAllowlist", "allowed_host_names", "host_name"]

#: Names of the loopback interface, always allowed.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Bind addresses that are not names a client would send.
_WILDCARD_BINDS = frozenset({"0.0.0.0", "::", ""})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def host_name(host_header: str | None) -> str | None:
    """The name in a ``Host`` header, without its port, lower-cased.

    Parameters
    ----------
    host_header : str | None
        ``"127.0.0.1:8765"``, ``"[::1]:8765"``, ``"Example.org."`` ...

    Returns
    -------
    str | None
        ``"127.0.0.1"``, ``"::1"``, ``"example.org"``; None when the header is missing
        or not a host (empty, an unclosed bracket, a non-numeric port).
    """
    if host_header is None:
        return None
    text = host_header.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        name, rest = text[1:end], text[end + 1 :]
        if rest and not (rest.startswith(":") and rest[1:].isdigit()):
            return None
    else:
        name, colon, port = text.rpartition(":")
        if not colon:
            name = text
        elif not port.isdigit() or ":" in name:
            return None
    name = name.rstrip(".").lower()
    return name or None


def allowed_host_names(configured_host: str | None, allowed_hosts: Iterable[str]) -> frozenset[str]:
    """The allowed Host names.

    Loopback names, the configured host (unless a wildcard bind) and ``allowed_hosts``,
    normalised like :func:`host_name` (brackets and ports are accepted and removed).
    """
    names = set(LOOPBACK_HOSTS)
    for entry in [configured_host or "", *allowed_hosts]:
        entry = entry.strip()
        if entry in _WILDCARD_BINDS:
            continue
        if entry == "*":
            names.add("*")
            continue
        # A bare IPv6 address (the --host form) has colons but no brackets.
        name = (
            entry.lower().rstrip(".")
            if entry.count(":") > 1 and "[" not in entry
            else host_name(entry)
        )
        if name:
            names.add(name)
    return frozenset(names)


class HostAllowlist:
    """ASGI middleware refusing HTTP requests and websockets whose ``Host`` is not allowed.

    Parameters
    ----------
    app : ASGI app
    allowed : frozenset of str
        From :func:`allowed_host_names`; ``"*"`` in it lets every request through.
    """

    def __init__(self, app: ASGIApp, allowed: frozenset[str]) -> None:
        self.app = app
        self.allowed = allowed

    def refusal(self, scope: Scope) -> str | None:
        """The sentence refusing this request, or None when its Host is allowed."""
        if "*" in self.allowed:
            return None
        raw = None
        for key, value in scope.get("headers") or ():
            if key == b"host":
                raw = value.decode("latin-1")
                break
        name = host_name(raw)
        if name is not None and name in self.allowed:
            return None
        shown = "no Host header" if raw is None else f"Host {raw[:200]!r}"
        return (
            f"Request refused: {shown} is not a name of this server (allowed: "
            f"{', '.join(sorted(self.allowed))}). If the server is meant to be reached by "
            "that name, start it with --allowed-hosts NAME (or RTDECODE_ALLOWED_HOSTS)."
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass HTTP and websocket requests with an allowed Host on; refuse the others."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        message = self.refusal(scope)
        if message is None:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            body = json.dumps({"detail": message}).encode("utf-8")
            await send(
                {
                    "type": "http.response.start",
                    "status": 400,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode("ascii")),
                        (b"cache-control", b"no-store"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        # Websocket: accept, say why, close (as the app's other refusals do).
        event = await receive()
        if event["type"] != "websocket.connect":
            return
        await send({"type": "websocket.accept"})
        await send(
            {
                "type": "websocket.send",
                "text": error_message("forbidden_host", message, close_code=CLOSE_FORBIDDEN_HOST),
            }
        )
        await send(
            {"type": "websocket.close", "code": CLOSE_FORBIDDEN_HOST, "reason": "forbidden_host"}
        )
