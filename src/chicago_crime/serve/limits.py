"""What the model server accepts before any route runs: hosts, body sizes, JSON, load.

* **Hosts** (:func:`allowed_hosts`): Starlette's ``TrustedHostMiddleware`` with the names
  derived from the configuration (loopback, ``BIND_HOST``, ``API_URL``'s host) plus
  ``API_ALLOWED_HOSTS``; any other ``Host`` gets 400, so a DNS-rebinding page cannot use it.
* **Body size** (:class:`BodySizeLimitMiddleware`): ``/predict/batch`` accepts
  ``MAX_BATCH_RECORDS`` x :data:`RECORD_JSON_BYTES` (+ slack), the other routes one record's
  worth (:data:`SINGLE_BODY_BYTES`); checked on ``Content-Length`` and counted while the body
  streams in, before anything is parsed (413).
* **JSON** (:class:`SafeJSONRoute`): the body is decoded with numbers too long for Python's
  ``int`` read as floats (so they fail field validation, not the parser), a body too deep or not
  UTF-8 is a JSON error (422, never 400/500), and large bodies are decoded in the thread pool so
  the event loop keeps answering.
* **Load** (:class:`ConcurrencyLimitMiddleware`): at most ``API_MAX_CONCURRENCY`` requests per
  process run at once; up to ``API_MAX_QUEUE`` more wait ``API_QUEUE_SECONDS`` for a slot, the
  rest get 503 with ``Retry-After``. Every request has ``API_REQUEST_TIMEOUT_SECONDS`` (503 with
  ``Retry-After`` when it runs out before the response starts). Probes and metrics
  (:data:`UNLIMITED_PATHS`) are never queued.

Hand-written where Starlette has no equivalent: it ships TrustedHost but no body, concurrency
or timeout middleware (uvicorn's ``--limit-concurrency`` answers 503 without ``Retry-After``
and counts probes too).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Coroutine
from typing import Any
from urllib.parse import urlsplit

import anyio
from fastapi import HTTPException, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from chicago_crime.config import Settings

#: Upper bound of one record's JSON: 1.6x the largest of the 395,692 real portal records of
#: 2017-01..2018-06 as the SODA API returns them (600 bytes compact, 644 indented);
#: ``tests/unit/test_serve_limits.py`` measures it again on the real data.
RECORD_JSON_BYTES = 1_000
#: Body limit of the single-record routes (a record, whitespace and ignored fields).
SINGLE_BODY_BYTES = 16 * RECORD_JSON_BYTES
#: Envelope of a batch (``{"records": [...]}`` and whitespace).
BATCH_SLACK_BYTES = 4_096
#: Bodies larger than this are decoded in the thread pool.
INLINE_DECODE_BYTES = 64_000
#: Digits above which a JSON integer is read as a float (Python refuses > 4,300 digits).
MAX_INT_DIGITS = 100
#: Never queued nor shed: liveness, readiness, metrics.
UNLIMITED_PATHS = frozenset({"/health", "/ready", "/metrics"})
BATCH_PATH = "/predict/batch"


def batch_body_limit(settings: Settings) -> int:
    """The largest legal ``/predict/batch`` body (``MAX_BODY_BYTES`` overrides it)."""
    if settings.max_body_bytes is not None:
        return settings.max_body_bytes
    return settings.max_batch_records * RECORD_JSON_BYTES + BATCH_SLACK_BYTES


def body_limit(settings: Settings, path: str) -> int:
    batch = batch_body_limit(settings)
    return batch if path == BATCH_PATH else min(batch, SINGLE_BODY_BYTES)


def allowed_hosts(settings: Settings) -> list[str]:
    """Host names the API answers: loopback, ``BIND_HOST``, ``API_URL``'s host and
    ``API_ALLOWED_HOSTS`` (``["*"]`` when that lists ``*``)."""
    extra = [h.strip() for h in settings.api_allowed_hosts.split(",") if h.strip()]
    if "*" in extra:
        return ["*"]
    hosts = {"localhost", "127.0.0.1", "::1", *extra}
    bind = settings.bind_host.strip().strip("[]")
    if bind in ("0.0.0.0", "::", ""):  # every interface: this machine's own names too
        hosts.update({socket.gethostname(), socket.getfqdn()})
    else:
        hosts.add(bind)
    api_host = urlsplit(settings.api_url).hostname
    if api_host:
        hosts.add(api_host)
    return sorted(h for h in hosts if h)


def _error(status_code: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse({"detail": detail}, status_code=status_code, headers=headers)


class BodySizeLimitMiddleware:
    """413 for a body over the route's limit, declared or streamed (before any parsing)."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        max_bytes = self.limit(scope.get("path", ""))
        detail = (f"request body larger than {max_bytes} bytes (the largest legal request; "
                  "MAX_BATCH_RECORDS bounds a batch)")
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > max_bytes:
                    await _error(status.HTTP_413_CONTENT_TOO_LARGE, detail)(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > max_bytes:  # FastAPI re-raises HTTPExceptions from the body
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, detail=detail)
            return message

        await self.app(scope, limited_receive, send)


def _int(text: str) -> int | float:
    return int(text) if len(text.lstrip("-")) <= MAX_INT_DIGITS else float(text)


def decode_json(body: bytes) -> Any:
    """``json.loads`` that fails only with ``JSONDecodeError`` (a 422 naming the position).

    ``NaN``/``Infinity`` and ``1e999`` become non-finite floats, which the record's fields
    refuse by name; so do integers too long for Python (read as floats)."""
    try:
        return json.loads(body, parse_int=_int)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise json.JSONDecodeError("nested too deeply", "", 0) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise json.JSONDecodeError(f"not valid JSON text: {str(exc)[:100]}", "", 0) from None


class SafeJSONRequest(Request):
    """A request whose ``json()`` is :func:`decode_json` (large bodies off the event loop)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > INLINE_DECODE_BYTES:
                self._json = await run_in_threadpool(decode_json, body)
            else:
                self._json = decode_json(body)
        return self._json


class SafeJSONRoute(APIRoute):
    """Routes whose JSON body is read by :class:`SafeJSONRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def safe_handler(request: Request) -> Response:
            return await handler(SafeJSONRequest(request.scope, request.receive))

        return safe_handler


class ConcurrencyLimitMiddleware:
    """At most ``max_concurrency`` requests at once, a bounded queue, a time limit each."""

    def __init__(self, app: ASGIApp, *, max_concurrency: int, max_queue: int,
                 queue_seconds: float, timeout_seconds: float) -> None:
        self.app = app
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.queue_seconds = queue_seconds
        self.timeout_seconds = timeout_seconds
        self._slots: anyio.Semaphore | None = None
        self.waiting = 0
        self.shed = 0  # requests answered 503 (queue full or waited too long)
        self.timed_out = 0

    def _busy(self, why: str) -> Response:
        self.shed += 1
        return _error(status.HTTP_503_SERVICE_UNAVAILABLE,
                      f"the server is busy ({why}); retry shortly", {"Retry-After": "1"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = anyio.Semaphore(self.max_concurrency)
        slots = self._slots
        if slots.value == 0:
            if self.waiting >= self.max_queue:
                await self._busy("queue full")(scope, receive, send)
                return
            self.waiting += 1
            try:
                with anyio.move_on_after(self.queue_seconds) as waited:
                    await slots.acquire()
            finally:
                self.waiting -= 1
            if waited.cancelled_caught:
                await self._busy(f"no slot within {self.queue_seconds:g} s")(
                    scope, receive, send)
                return
        else:
            await slots.acquire()
        try:
            await self._timed(scope, receive, send)
        finally:
            slots.release()

    async def _timed(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        with anyio.move_on_after(self.timeout_seconds) as limit:
            await self.app(scope, receive, tracking_send)
        if limit.cancelled_caught:
            self.timed_out += 1
            if not started:
                await _error(status.HTTP_503_SERVICE_UNAVAILABLE,
                             f"request not completed within {self.timeout_seconds:g} s "
                             "(API_REQUEST_TIMEOUT_SECONDS)", {"Retry-After": "1"})(
                    scope, receive, send)
