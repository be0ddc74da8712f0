"""The ASGI application: Starlette routes wrapped in one middleware for auth, faults and stats.

The middleware runs outside Starlette so it sees every request, including unknown routes (404
envelope) and injected failures, and can shape response bodies: pace them (bandwidth cap), cut
them short (truncation: the connection is closed although Content-Length promised more) or abort
the TCP connection with a reset.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any

import trio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pixxelfs.emulator import api, control
from pixxelfs.emulator.faults import Decision
from pixxelfs.emulator.state import EmulatorState, HttpError
from pixxelfs.emulator.stats import Stats
from pixxelfs.emulator.storage import ABORTED, s3_error, storage_routes

log = logging.getLogger(__name__)

_S3_CODES = {429: "TooManyRequests", 500: "InternalError", 503: "SlowDown"}


def build_app(state: EmulatorState) -> ASGIApp:
    app = Starlette(
        routes=[*api.ROUTES, *storage_routes(), *control.ROUTES],
        exception_handlers={HttpError: _http_error, Exception: _internal_error},
    )
    app.state.emulator = state
    return EmulatorMiddleware(app, state)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HttpError)
    return JSONResponse(exc.envelope(), status_code=exc.status)


async def _internal_error(request: Request, exc: Exception) -> Response:
    error = HttpError(500, "internal", "internal emulator error")
    return JSONResponse(error.envelope(), status_code=500)


def _envelope(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return JSONResponse(HttpError(status, code, message).envelope(), status, headers=headers)


class _Recorder:
    """Wraps ``send`` to count the request, its status and body bytes.

    Counting happens *before* each message is passed on, so a client that has seen a response
    always finds it in the stats.
    """

    def __init__(self, send: Send, stats_of: Callable[[], Stats], route: str) -> None:
        self.send = send
        self.stats_of = stats_of
        self.route = route
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.stats_of().record(self.route, message["status"], 0)
        elif message["type"] == "http.response.body":
            self.stats_of().bytes_sent += len(message.get("body", b""))
        await self.send(message)


class _BodyShaper:
    """Applies a decision's body faults: bandwidth pacing, then truncation or reset."""

    def __init__(self, send: Send, decision: Decision, scope: Scope) -> None:
        self.send = send
        self.scope = scope
        self.bandwidth = decision.bandwidth
        cuts = [c for c in (decision.truncate_after, decision.reset_after) if c is not None]
        self.cut = min(cuts) if cuts else None
        self.reset = decision.reset_after is not None and decision.reset_after == self.cut
        self.sent = 0
        self.started: float | None = None
        self.stopped = False

    async def __call__(self, message: Message) -> None:
        if self.stopped:
            return  # the connection is going away: swallow the rest of the body
        if message["type"] != "http.response.body":
            await self.send(message)
            return
        body: bytes = message.get("body", b"")
        more: bool = message.get("more_body", False)
        if self.cut is not None and self.sent + len(body) > self.cut:
            body, more = body[: self.cut - self.sent], True
            self.stopped = True
            self.scope[ABORTED] = True
        await self._paced(body, more)

    async def _paced(self, body: bytes, more: bool) -> None:
        if self.bandwidth is None or not body:
            self.sent += len(body)
            await self.send({"type": "http.response.body", "body": body, "more_body": more})
            return
        piece = max(1024, self.bandwidth // 20)
        if self.started is None:
            self.started = trio.current_time()
        for pos in range(0, len(body), piece):
            chunk = body[pos : pos + piece]
            await trio.sleep_until(self.started + self.sent / self.bandwidth)
            self.sent += len(chunk)
            last = pos + piece >= len(body)
            await self.send(
                {"type": "http.response.body", "body": chunk, "more_body": more or not last}
            )


class EmulatorMiddleware:
    def __init__(self, app: Starlette, state: EmulatorState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route, match = self._route(scope)
        recorder = _Recorder(send, lambda: self.state.stats, route)
        try:
            await self._handle(scope, receive, recorder, route, match)
        finally:
            if not recorder.started:
                self.state.stats.record(route, 0, 0)  # no response at all: still worth counting

    def _route(self, scope: Scope) -> tuple[str, Match]:
        partial = None
        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return getattr(route, "name", "unknown"), match
            if match is Match.PARTIAL and partial is None:
                partial = getattr(route, "name", "unknown")
        return (partial, Match.PARTIAL) if partial else ("unknown", Match.NONE)

    async def _handle(
        self, scope: Scope, receive: Receive, send: Send, route: str, match: Match
    ) -> None:
        early = self._refusal(scope, route, match)
        if early is not None:
            await early(scope, receive, send)
            return
        raw = self.state.hostile.answers.get(route)
        if raw is not None:
            await Response(raw.body, raw.status, media_type="application/json")(
                scope, receive, send
            )
            return
        decision = self.state.faults.decide(route)
        if decision.latency:
            await trio.sleep(decision.latency)
        if decision.error_status is not None:
            await _injected_error(route, decision)(scope, receive, send)
            return
        if (
            decision.bandwidth is None
            and decision.truncate_after is None
            and decision.reset_after is None
        ):
            await self.app(scope, receive, send)
            return
        shaper = _BodyShaper(send, decision, scope)
        await self.app(scope, receive, shaper)
        if shaper.stopped and shaper.reset:
            reset_connection(scope)
        # Returning without finishing the body makes hypercorn close the connection.

    def _refusal(self, scope: Scope, route: str, match: Match) -> Response | None:
        if match is Match.NONE:
            return _envelope(404, "not_found", f"no route for {scope['path']}")
        if match is Match.PARTIAL:
            return _envelope(405, "method_not_allowed", f"{scope['method']} is not allowed here")
        if route == "ping" or route.startswith("storage"):
            return None  # signed URLs carry their own authorisation; any API key is ignored
        if not self._authorised(scope):
            return _envelope(403, "forbidden", "missing or invalid API key")
        return None

    def _authorised(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        value = headers.get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "bearer":
            value = rest.strip()
        return bool(value) and value == self.state.config.api_key


def _injected_error(route: str, decision: Decision) -> Response:
    status = decision.error_status or 500
    headers = {"retry-after": str(decision.retry_after)}
    if route.startswith("storage"):
        return s3_error(status, _S3_CODES.get(status, "InternalError"), "Injected fault", headers)
    code = "rate_limited" if status == 429 else "unavailable"
    return _envelope(status, code, "injected fault", headers)


# -- aborting a connection ------------------------------------------------------------------------

_LIBC: Any = None


def reset_connection(scope: Scope) -> bool:
    """Make the server side of this request's TCP connection send an RST right now.

    ASGI hides the socket, so find it among our file descriptors by its address pair, set
    SO_LINGER to zero and disconnect it (``connect(AF_UNSPEC)``, which Linux turns into a reset).
    hypercorn then sees a dead socket and cleans up. Without /proc this degrades to the plain close
    that follows, which the client also sees as a broken body.
    """
    client, server = scope.get("client"), scope.get("server")
    if not client or not server or not os.path.isdir("/proc/self/fd"):
        return False
    for name in os.listdir("/proc/self/fd"):
        with (
            contextlib.suppress(OSError, ValueError),
            socket.socket(fileno=os.dup(int(name))) as sock,  # not a socket: OSError
        ):
            if sock.type != socket.SOCK_STREAM:
                continue
            if tuple(sock.getpeername()[:2]) != tuple(client):
                continue
            if tuple(sock.getsockname()[:2]) != tuple(server):
                continue
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            _disconnect(sock.fileno())
            return True
    return False


def _disconnect(fd: int) -> None:
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    unspec = struct.pack("=H14x", socket.AF_UNSPEC)
    _LIBC.connect(fd, unspec, len(unspec))
