"""MLflow's basic-auth accounts, written into its user store before the server starts.

Standalone on purpose (it imports only MLflow and the standard library): the native stack calls
:func:`sync` with the accounts of ``.env``, and the Compose MLflow image, which carries MLflow
but not this package, runs this file as a script with the same accounts from its environment.
Writing the store directly (rather than through the server's REST API) means the server never
starts with a default admin, and a password changed in ``.env`` wins at the next start.
"""

from __future__ import annotations

import os
import sys
import warnings

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


def main() -> int:
    """``MLFLOW_AUTH_DATABASE_URI`` + the accounts' variables: the Compose image's entrypoint."""
    try:
        uri = os.environ["MLFLOW_AUTH_DATABASE_URI"]
        changed = sync(uri, accounts_from_env(dict(os.environ)))
    except (KeyError, ValueError) as exc:
        print(f"mlflow accounts: {exc}", file=sys.stderr)
        return 1
    print(f"mlflow accounts: {', '.join(changed) or 'up to date'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
