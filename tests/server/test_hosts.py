"""Host allowlist (DNS rebinding): requests that name a foreign Host are refused on
every route and on /ws; loopback names, the configured host and --allowed-hosts are
served. A real uvicorn on 127.0.0.1 port 0 and real httpx / websockets clients; the
"rebinding" clients connect to 127.0.0.1 but name evil.example, as a browser does once
evil.example's DNS record points to 127.0.0.1."""

from __future__ import annotations

import json
import socket

import httpx
import pytest
from websockets.sync.client import connect

from rtdecode.server.hosts import allowed_host_names, host_name
from tests.helpers.server import DEADLINE_S, close_code, recv_until, serving

EVIL = "evil.example"
ROUTES = ["/", "/index.html", "/health", "/api/status", "/api/gallery/img_001", "/metrics", "/nope"]


def http_get(port: int, path: str, host: str, **headers: str) -> httpx.Response:
    return httpx.get(
        f"http://127.0.0.1:{port}{path}", headers={"Host": host, **headers}, timeout=10
    )


def ws_as(port: int, host: str, **kwargs):
    """A websockets client whose URL names ``host`` but whose socket goes to 127.0.0.1."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return connect(f"ws://{host}/ws", sock=sock, open_timeout=10, max_queue=None, **kwargs)


@pytest.mark.parametrize("path", ROUTES)
def test_rebinding_shaped_http_requests_are_refused_on_every_route(path):
    with serving(fps=None) as (handle, _):
        for host in (f"{EVIL}:{handle.port}", EVIL, f"127.0.0.1.{EVIL}", "127.0.0.2"):
            r = http_get(handle.port, path, host, Origin=f"http://{host}")
            assert r.status_code == 400, (host, path, r.status_code)
            detail = r.json()["detail"]
            assert host in detail and "--allowed-hosts" in detail
            assert "synthetic-meg" not in r.text  # nothing of the status leaks


def test_rebinding_shaped_websocket_is_refused_with_4400_and_a_reason():
    with serving(fps=30) as (handle, _):
        host = f"{EVIL}:{handle.port}"
        with ws_as(handle.port, host, origin=f"http://{host}") as ws:
            error = recv_until(ws, "error")
            assert error["code"] == "forbidden_host" and error["close_code"] == 4400
            assert EVIL in error["message"]
            assert close_code(ws) == 4400
        # Only the error came: no hello, no frame, no status.
        with ws_as(handle.port, host) as ws:
            first = json.loads(ws.recv(timeout=DEADLINE_S))
            assert first["type"] == "error"
            assert close_code(ws) == 4400


def test_a_request_without_host_is_refused():
    with serving(fps=None) as (handle, _):
        with socket.create_connection(("127.0.0.1", handle.port), timeout=10) as sock:
            sock.sendall(b"GET /api/status HTTP/1.0\r\n\r\n")
            reply = b""
            while chunk := sock.recv(65536):
                reply += chunk
        assert reply.startswith(b"HTTP/1.1 400") and b"no Host header" in reply


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "LOCALHOST.", "[::1]"])
def test_loopback_names_with_any_port_are_served(host):
    with serving(fps=30) as (handle, _):
        for name in (host, f"{host}:{handle.port}", f"{host}:1"):
            for path in ("/", "/health", "/api/status", "/metrics"):
                assert http_get(handle.port, path, name).status_code == 200, (name, path)
        with ws_as(handle.port, f"{host}:{handle.port}") as ws:
            assert recv_until(ws, "hello")["type"] == "hello"
            assert isinstance(recv_until(ws, "frame"), bytes)


def test_allowed_hosts_and_the_configured_host_are_served_and_nothing_else():
    with serving(fps=30, allowed_hosts="meg-lab.local, 10.0.0.7", host="decoder.lab") as (
        handle,
        _,
    ):
        for name in ("meg-lab.local", "MEG-LAB.local:8765", "10.0.0.7:80", "decoder.lab"):
            assert http_get(handle.port, "/api/status", name).status_code == 200, name
            with ws_as(handle.port, f"{name.lower().split(':')[0]}:{handle.port}") as ws:
                assert recv_until(ws, "hello")["type"] == "hello"
        for name in ("other.lab", "meg-lab.local.evil.example", "10.0.0.8"):
            assert http_get(handle.port, "/api/status", name).status_code == 400, name


def test_star_allows_any_host_and_the_token_still_guards():
    with serving(fps=None, allowed_hosts="*", token="s3cret") as (handle, _):
        assert http_get(handle.port, "/api/status", EVIL).status_code == 401
        assert http_get(handle.port, "/api/status?token=s3cret", EVIL).status_code == 200


def test_host_header_parsing():
    assert host_name("127.0.0.1:8765") == "127.0.0.1"
    assert host_name("[::1]:8765") == "::1"
    assert host_name("[::1]") == "::1"
    assert host_name("Example.ORG.") == "example.org"
    for bad in (None, "", ":80", "[::1", "[::1]x", "a:b", "a:1:2", "host:port"):
        assert host_name(bad) is None, bad
    names = allowed_host_names("0.0.0.0", ["Lab.Example:8765", "::2", "[fe80::1]"])
    assert names == {"127.0.0.1", "localhost", "::1", "lab.example", "::2", "fe80::1"}
