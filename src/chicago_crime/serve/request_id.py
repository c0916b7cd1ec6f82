"""``X-Request-ID``: every request gets an id, answered in the response header.

A client's own ``X-Request-ID`` is kept when it is 1-128 characters of ``A-Z a-z 0-9 . _ : -``
(a UUID, a trace id); anything else is replaced by a generated id (32 hex digits), so no
client text reaches a log or the prediction log unchecked. The id and the request's arrival
time are put in the request's state (``request.state.request_id``, ``.started``) for the
routes; the prediction log stores the id with each prediction.

A plain ASGI middleware (a few microseconds a request), outermost, so every answer carries
the id: 400s, 413s and 503s from the other middlewares too.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

HEADER = "X-Request-ID"
_HEADER_KEY = b"x-request-id"
_VALID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")

Scope = dict[str, Any]


def request_id(header: bytes | None) -> str:
    """The client's id when it is acceptable, else a new one."""
    if header is not None and _VALID.fullmatch(header):
        return header.decode("ascii")
    return uuid.uuid4().hex


class RequestIdMiddleware:
    """Sets ``state.request_id`` and ``state.started``; adds ``X-Request-ID`` to the answer."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == _HEADER_KEY:
                given = value
                break
        rid = request_id(given)
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        state["started"] = started
        header = (_HEADER_KEY, rid.encode("ascii"))

        async def send_with_id(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*(h for h in message.get("headers", ())
                                        if h[0].lower() != _HEADER_KEY), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
