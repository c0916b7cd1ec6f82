"""The model server's container healthcheck: serving, or waiting for its first champion.

Docker's healthcheck gates ``depends_on`` and ``docker compose up --wait``. A fresh platform has
no champion until its first training, so "healthy" cannot mean "a model is loaded" (``make up``
would never finish); it means the server works: ``/ready`` is 200 (a model serves), or 503 with
the registry read and nothing refused (no champion yet). A server that cannot read the registry
and has nothing to serve, or whose champion was refused with nothing else loaded, is unhealthy.
Standard library only: it runs every few seconds in the container.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8800/ready"


def verdict(status: int, body: dict[str, Any]) -> tuple[bool, str]:
    """(healthy, why) for a ``/ready`` answer."""
    message = str(body.get("message") or body.get("status") or "")
    if status == 200:
        return True, f"{body.get('status', 'ready')}: {message}"
    if status == 503 and body.get("model") is None and body.get("registry_reachable") \
            and not body.get("champion_refused"):
        return True, f"waiting for a champion: {message}"
    return False, f"/ready {status}: {message}"


def main(argv: list[str] | None = None) -> int:
    url = (argv if argv is not None else sys.argv[1:])[:1] or [DEFAULT_URL]
    try:
        with urllib.request.urlopen(url[0], timeout=4) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except OSError as exc:
        print(f"unhealthy: {url[0]}: {exc}")
        return 1
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    healthy, why = verdict(status, body if isinstance(body, dict) else {})
    print(("healthy: " if healthy else "unhealthy: ") + why[:300])
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
