#!/usr/bin/env python3
"""Create ``.env`` from ``.env.example`` and fill its empty secrets (``make install``,
``make install-native``, ``make local-up``).

    python scripts/gen_secrets.py [.env] [--airflow-uid auto|UID]

``.env`` is git-ignored and always left with mode 600: it holds every password of the platform.
``.env.example`` (tracked) carries the settings with the secrets empty. Generated:

* ``AIRFLOW_JWT_SECRET``: 64 random bytes, URL-safe base64 (Airflow wants >= 64 bytes).
* ``AIRFLOW_FERNET_KEY``: a Fernet key (32 random bytes, URL-safe base64, as
  ``cryptography.fernet.Fernet.generate_key()`` makes it).
* every password (``PASSWORDS``) and ``API_KEY``: 32 random bytes, URL-safe base64 (safe in
  URLs, config files and environment variables without quoting).
* ``JUPYTER_TOKEN``: 32 random bytes, URL-safe base64 (JupyterLab's login in Compose).

A value that is already set is never touched, so running it again changes nothing, except the
well-known passwords the template's old tracked ``.env`` shipped (``LEGACY_DEFAULTS``), which
are replaced. A secret whose line is missing is appended. Values are never printed, only
names. Only the standard library is used: Docker-only users need no virtualenv.
``--airflow-uid auto`` writes the caller's uid into ``AIRFLOW_UID`` on Linux (files the
containers write into ``./airflow/logs`` then belong to the user); as root, or on macOS/Windows
where Docker Desktop maps ownership, the value in ``.env`` is kept.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path


def jwt_secret() -> str:
    """>= 64 random bytes, URL-safe (Airflow's ``[api_auth] jwt_secret``)."""
    return secrets.token_urlsafe(64)


def fernet_key() -> str:
    """A valid ``cryptography`` Fernet key: 32 random bytes, URL-safe base64."""
    return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii")


def api_key() -> str:
    """Key of the model server's admin endpoints."""
    return secrets.token_urlsafe(32)


def password() -> str:
    """A random password: 32 random bytes, URL-safe base64."""
    return secrets.token_urlsafe(32)


#: Every password of the platform: databases, broker, S3 identities, UIs, MLflow accounts.
PASSWORDS = (
    "PG_PASSWORD", "PG_ADMIN_PASSWORD", "PG_MONITORING_PASSWORD", "VALKEY_PASSWORD",
    "AWS_SECRET_ACCESS_KEY", "S3_ADMIN_SECRET_ACCESS_KEY", "MLFLOW_S3_SECRET_ACCESS_KEY",
    "AIRFLOW_ADMIN_PASSWORD", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_TRACKING_PASSWORD",
    "MLFLOW_SERVING_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY", "GRAFANA_ADMIN_PASSWORD",
)
GENERATORS: dict[str, Callable[[], str]] = {
    "AIRFLOW_JWT_SECRET": jwt_secret,
    "AIRFLOW_FERNET_KEY": fernet_key,
    "API_KEY": api_key,
    "JUPYTER_TOKEN": api_key,
    **dict.fromkeys(PASSWORDS, password),
}
#: Well-known values the template's tracked ``.env`` used to ship: replaced like empty ones.
LEGACY_DEFAULTS = {
    "PG_PASSWORD": "airflow", "AWS_SECRET_ACCESS_KEY": "minio123",
    "AIRFLOW_ADMIN_PASSWORD": "airflow",
}

_LINE = re.compile(
    r"^(?P<export>\s*(?:export\s+)?)(?P<key>[A-Za-z_][A-Za-z0-9_]*)\s*=(?P<value>.*)$")


def _value(raw: str) -> str:
    return raw.split(" #", 1)[0].strip().strip("'\"")


def _is_empty(raw: str, key: str = "") -> bool:
    value = _value(raw)
    return value == "" or LEGACY_DEFAULTS.get(key) == value


def fill_secrets(text: str, generators: dict[str, Callable[[], str]] | None = None,
                 overrides: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """Return ``text`` with empty secrets filled (and ``overrides`` applied) and the names changed.

    Comments, order and every other line are kept byte for byte.
    """
    generators = GENERATORS if generators is None else generators
    overrides = overrides or {}
    lines = text.splitlines(keepends=True)
    seen: set[str] = set()
    changed: list[str] = []
    for i, line in enumerate(lines):
        m = _LINE.match(line.rstrip("\r\n"))
        if not m:
            continue
        key = m["key"]
        seen.add(key)
        newline = line[len(line.rstrip("\r\n")):]
        if key in overrides:
            if m["value"].strip() != overrides[key]:
                lines[i] = f"{m['export']}{key}={overrides[key]}{newline}"
                changed.append(key)
        elif key in generators and _is_empty(m["value"], key):
            lines[i] = f"{m['export']}{key}={generators[key]()}{newline}"
            changed.append(key)
    missing = [k for k in (*generators, *overrides) if k not in seen]
    if missing:
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        for key in missing:
            value = overrides[key] if key in overrides else generators[key]()
            lines.append(f"{key}={value}\n")
            changed.append(key)
    return "".join(lines), changed


def auto_airflow_uid() -> str | None:
    """The uid the Airflow containers should run as, or None to keep ``.env``'s value."""
    if not sys.platform.startswith("linux"):
        return None
    uid = os.getuid()
    return None if uid == 0 else str(uid)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` in one rename; the new file has mode 600."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("env_file", nargs="?", default=".env", type=Path)
    parser.add_argument("--airflow-uid", metavar="auto|UID",
                        help="set AIRFLOW_UID: 'auto' = your uid on Linux (not root)")
    args = parser.parse_args(argv)

    path: Path = args.env_file
    example = path.with_name(".env.example")
    created = False
    if not path.is_file():
        if not example.is_file():
            print(f"error: neither {path} nor {example} found", file=sys.stderr)
            return 1
        text = example.read_text(encoding="utf-8")
        write_atomic(path, text)
        created = True
        print(f"{path}: created from {example.name} (git-ignored, mode 600; edit ports, "
              "AIRFLOW_UID and SOCRATA_APP_TOKEN there)")
    overrides: dict[str, str] = {}
    if args.airflow_uid:
        uid = auto_airflow_uid() if args.airflow_uid == "auto" else args.airflow_uid
        if uid is not None:
            if not uid.isdigit():
                print(f"error: --airflow-uid must be 'auto' or a number, got {uid!r}",
                      file=sys.stderr)
                return 1
            overrides["AIRFLOW_UID"] = uid
    text = path.read_text(encoding="utf-8")
    new_text, changed = fill_secrets(text, overrides=overrides)
    if changed:
        write_atomic(path, new_text)
        print(f"{path}: generated {', '.join(changed)} (values not shown; they stay in {path})")
    else:
        os.chmod(path, 0o600)
        if not created:
            print(f"{path}: secrets already set, nothing to do")
    return 0


if __name__ == "__main__":
    sys.exit(main())
