"""MLflow's basic-auth set-up: its configuration file and the accounts in its user store.

Standalone on purpose (it imports only MLflow and the standard library): the native stack calls
:func:`auth_ini` and :func:`sync` with the settings of ``.env``, and the Compose MLflow image,
which carries MLflow but not this package, runs this file as a script (``--auth-ini PATH``) with
the same values from its environment, so both render the same file and the same accounts.
Writing the store directly (rather than through the server's REST API) means the server never
starts with a default admin, and a password changed in ``.env`` wins at the next start.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

#: The platform's own account on every experiment and model: it logs runs, registers versions
#: and moves aliases, but cannot delete what it did not create.
PLATFORM_PERMISSION = "EDIT"
#: The model server's account: it reads the registry and downloads models, nothing else.
SERVING_PERMISSION = "READ"

#: (username variable, password variable, is admin, permission on every experiment and model)
ACCOUNTS_ENV = (
    ("MLFLOW_ADMIN_USERNAME", "MLFLOW_ADMIN_PASSWORD", True, None),
    ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", False, PLATFORM_PERMISSION),
    ("MLFLOW_SERVING_USERNAME", "MLFLOW_SERVING_PASSWORD", False, SERVING_PERMISSION),
)

Account = tuple[str, str, bool, "str | None"]


def auth_ini(database_uri: str, admin_username: str) -> str:
    """The basic-auth app's configuration (``MLFLOW_AUTH_CONFIG_PATH``). It holds the user
    store's URI (so it is written mode 600) but no password of an account: :func:`sync` writes
    those into the store itself."""
    return (
        "# Managed by chicago-crime (mlflow_accounts.auth_ini; mode 600): holds the auth "
        "database's URI.\n"
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {database_uri.replace('%', '%%')}\n"  # configparser interpolation
        f"admin_username = {admin_username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        # Each login check costs a scrypt hash (~0.1-0.6 s of CPU here): without this cache a
        # model download (one request per file) takes minutes on a busy box. A password changed
        # through MLflow's API applies at once; one changed in the store directly (the stack
        # does that for a password edited in .env, and restarts MLflow) within the TTL.
        "auth_cache_ttl_seconds = 300\n"
    )


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 600, never wider)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    path.chmod(0o600)


def sync(database_uri: str, accounts: list[Account]) -> list[str]:
    """Create or update ``accounts`` (username, password, is admin, permission) in the user
    store at ``database_uri``; returns what changed (names only, never a password)."""
    with warnings.catch_warnings():  # MLflow's server modules warn about starlette internals
        warnings.simplefilter("ignore")
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(database_uri)
    changed = []
    try:
        for user, password, admin, permission in accounts:
            if not store.has_user(user, use_primary=True):
                store.create_user(user, password, is_admin=admin)
                changed.append(f"created {user}")
            else:
                current = store.get_user(user)
                good = store.authenticate_user(user, password, use_primary=True)
                if not good or current.is_admin != admin:
                    store.update_user(user, password=password, is_admin=admin)
                    changed.append(f"updated {user}")
            if permission:
                for resource in ("experiment", "registered_model"):
                    store.grant_user_permission(user, resource, "*", permission)
    finally:
        store.engine.dispose()
    return changed


def accounts_from_env(env: dict[str, str]) -> list[Account]:
    """The three accounts from ``env``; every one must have a name and a password."""
    out: list[Account] = []
    for user_var, password_var, admin, permission in ACCOUNTS_ENV:
        user, password = env.get(user_var, "").strip(), env.get(password_var, "")
        if not user or not password:
            raise ValueError(f"{user_var} / {password_var} is empty: run `make install` (Compose) "
                             "or `make install-native` to generate the MLflow accounts")
        out.append((user, password, admin, permission))
    return out


def main(argv: list[str] | None = None) -> int:
    """``MLFLOW_AUTH_DATABASE_URI`` + the accounts' variables: the Compose image's entrypoint.

    With ``--auth-ini PATH`` it first writes the basic-auth configuration there (mode 600)."""
    parser = argparse.ArgumentParser(description="Write MLflow's basic-auth set-up.")
    parser.add_argument("--auth-ini", type=Path, help="write the basic-auth configuration here")
    args = parser.parse_args([] if argv is None else argv)
    try:
        uri = os.environ["MLFLOW_AUTH_DATABASE_URI"]
        accounts = accounts_from_env(dict(os.environ))
        if args.auth_ini:
            write_private(args.auth_ini, auth_ini(uri, accounts[0][0]))
        changed = sync(uri, accounts)
    except (KeyError, ValueError) as exc:
        print(f"mlflow accounts: {exc}", file=sys.stderr)
        return 1
    print(f"mlflow accounts: {', '.join(changed) or 'up to date'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
