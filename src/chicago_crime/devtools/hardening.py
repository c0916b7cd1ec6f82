"""The native stack's access control: who may use each service, and the files that say so.

Each function renders or applies one service's lock (``stack up`` writes them, mode 600, owned by
the user the service runs as):

* PostgreSQL: ``pg_hba.conf`` with SCRAM passwords on TCP *and* on the Unix socket (whose folder
  is private, 0700), peer authentication for the OS user ``postgres`` only (the stack's own
  set-up connection); the platform's role is not a superuser; the prediction log's writer
  reaches its database alone (``pg_hba.conf`` rejects it elsewhere).
* redis: a config file with ``requirepass`` (the password never appears on a command line).
* SeaweedFS: ``identities.json`` (S3 identities limited to their bucket: the platform's, the
  MLflow server's, and an admin used only to create the buckets) and ``security.toml``: JWT
  signing keys so the filer, volume and master HTTP ports refuse unsigned reads and writes, and
  mutual TLS on every gRPC port from a private CA generated here (``cryptography``).
* MLflow: the basic-auth app's config (its user store in PostgreSQL) and the accounts in it,
  written straight into that store with MLflow's own ``SqlAlchemyStore`` so a password changed
  in ``.env`` is applied on the next ``up`` without knowing the old one.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chicago_crime.config import Settings

from chicago_crime.devtools.mlflow_accounts import PLATFORM_PERMISSION, SERVING_PERMISSION
from chicago_crime.devtools.mlflow_accounts import auth_ini as _auth_ini
from chicago_crime.devtools.mlflow_accounts import sync as _sync_accounts


def _secret(value: object) -> str:
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value or "")


# -- PostgreSQL --------------------------------------------------------------------------------
def pg_hba(settings: Settings | None = None) -> str:
    """Passwords (SCRAM) everywhere; only the OS user ``postgres`` may log in as ``postgres``
    through the (private) socket without one. With ``settings``: the prediction log's writer
    (``PG_MONITORING_USER``) may log in to the monitoring database and is rejected from every
    other one, whatever the grants say."""
    lines = [
        "# Managed by chicago_crime.devtools.stack: rewritten on every `make local-up`.",
        "# TYPE  DATABASE  USER      ADDRESS        METHOD",
        "local   all       postgres                 peer",
    ]
    if settings is not None:
        db, writer = pg_hba_name(settings.pg_monitoring_db), pg_hba_name(
            settings.pg_monitoring_user)
        lines += [
            f"local   {db}  {writer}                 scram-sha-256",
            f"host    {db}  {writer}  127.0.0.1/32   scram-sha-256",
            f"host    {db}  {writer}  ::1/128        scram-sha-256",
            f"local   all       {writer}                 reject",
            f"host    all       {writer}  all            reject",
        ]
    lines += [
        "local   all       all                      scram-sha-256",
        "host    all       all       127.0.0.1/32   scram-sha-256",
        "host    all       all       ::1/128        scram-sha-256",
    ]
    return "\n".join(lines) + "\n"


def pg_hba_name(name: str) -> str:
    """A database or role name as pg_hba.conf reads it (quoted: never a keyword or a list)."""
    if '"' in name or "\n" in name:
        raise ValueError(f"unsupported PostgreSQL name for pg_hba.conf: {name!r}")
    return f'"{name}"'


def pg_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def pg_role_sql(settings: Settings) -> list[str]:
    """Statements that make the platform's role a password-only, non-superuser owner and set
    the superuser's password (``PG_ADMIN_PASSWORD``, or none: no TCP login as superuser)."""
    user = settings.pg_user.replace('"', '""')
    password = pg_quote_literal(settings.pg_password.get_secret_value())
    admin = settings.pg_admin_password
    admin_sql = (f"ALTER ROLE postgres PASSWORD {pg_quote_literal(_secret(admin))}"
                 if admin and _secret(admin) else "ALTER ROLE postgres PASSWORD NULL")
    return [
        f'ALTER ROLE "{user}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
        f"NOBYPASSRLS PASSWORD {password}",
        admin_sql,
    ]


def pg_monitoring_sql(settings: Settings) -> list[tuple[str | None, str]]:
    """(database or None for the maintenance one, statement) that set up the prediction log's
    database access, idempotently: its writer (``PG_MONITORING_USER``) is a login without any
    right beyond the monitoring database, where it may create its table (the writer creates it
    at start) and the platform's role (``PG_USER``) reads what it writes. ``PG_MONITORING_DB``
    itself is created like the platform's other databases (owned by ``PG_USER``, no PUBLIC
    access). The same statements as dockerfiles/postgres/init-databases.sh."""
    writer, platform = pg_ident(settings.pg_monitoring_user), pg_ident(settings.pg_user)
    db = pg_ident(settings.pg_monitoring_db)
    password = pg_quote_literal(_secret(settings.pg_monitoring_password))
    if not _secret(settings.pg_monitoring_password):
        raise ValueError("PG_MONITORING_PASSWORD is empty: run `make install-native` to "
                         "generate it")
    return [
        (None, f"ALTER ROLE {writer} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
               f"NOBYPASSRLS NOINHERIT CONNECTION LIMIT 50 PASSWORD {password}"),
        (None, f"GRANT CONNECT ON DATABASE {db} TO {writer}"),
        (settings.pg_monitoring_db, "REVOKE CREATE ON SCHEMA public FROM PUBLIC"),
        (settings.pg_monitoring_db, f"GRANT USAGE, CREATE ON SCHEMA public TO {writer}"),
        (settings.pg_monitoring_db, f"ALTER DEFAULT PRIVILEGES FOR ROLE {writer} IN SCHEMA public "
                                    f"GRANT SELECT ON TABLES TO {platform}"),
        (settings.pg_monitoring_db, f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {platform}"),
    ]


# -- redis -------------------------------------------------------------------------------------
def redis_conf(settings: Settings, data_dir: Path) -> str:
    password = _secret(settings.valkey_password)
    if not password:
        raise ValueError("VALKEY_PASSWORD is empty: run `make install-native` to generate it")
    return "\n".join([
        "# Managed by chicago_crime.devtools.stack (mode 600): the broker password lives here.",
        "bind 127.0.0.1",
        f"port {settings.valkey_port}",
        "protected-mode yes",
        f"requirepass {password}",
        "save \"\"",
        "appendonly no",
        f"dir {data_dir}",
        "daemonize no",
        "",
    ])


# -- SeaweedFS ---------------------------------------------------------------------------------
def s3_identities(settings: Settings) -> dict[str, object]:
    """S3 identities, each limited to what it needs (SeaweedFS ``Action:bucket`` scopes)."""
    data, artifacts = settings.data_repo_bucket_name, settings.mlflow_bucket_name

    def scoped(bucket: str) -> list[str]:
        return [f"{action}:{bucket}" for action in ("Read", "Write", "List", "Tagging")]

    identities = [
        ("platform", settings.aws_access_key_id, settings.aws_secret_access_key, scoped(data)),
        ("mlflow", settings.mlflow_s3_access_key_id, settings.mlflow_s3_secret_access_key,
         scoped(artifacts)),
        ("admin", settings.s3_admin_access_key_id, settings.s3_admin_secret_access_key,
         ["Admin", "Read", "Write", "List", "Tagging"]),
    ]
    out = []
    for name, key, secret, actions in identities:
        if not _secret(secret):
            raise ValueError(f"the S3 secret of identity {name!r} is empty: run "
                             "`make install-native` to generate it")
        out.append({"name": name, "credentials": [{"accessKey": key, "secretKey": _secret(secret)}],
                    "actions": actions})
    return {"identities": out}


def seaweedfs_certificates(folder: Path) -> dict[str, Path]:
    """A private CA and one certificate for SeaweedFS's components (created once).

    The components present it to each other on their gRPC ports (mutual TLS); a caller without
    a certificate signed by this CA is refused during the TLS handshake.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    paths = {"ca": folder / "ca.crt", "cert": folder / "seaweedfs.crt",
             "key": folder / "seaweedfs.key"}
    if all(p.exists() for p in paths.values()):
        return paths
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=3650)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("chicago-crime-seaweedfs-ca"))
          .issuer_name(name("chicago-crime-seaweedfs-ca")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(start)
          .not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("seaweedfs")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    # The CA's key is not kept: nothing else is ever signed with it.
    return paths


def seaweedfs_security(keys: dict[str, str], certs: dict[str, Path]) -> str:
    """``security.toml``: signed HTTP requests on filer/volume, mutual TLS on every gRPC port."""
    components = ("master", "volume", "filer", "s3", "admin", "worker")
    grpc = "\n".join(
        f'[grpc.{c}]\ncert = "{certs["cert"]}"\nkey = "{certs["key"]}"\n'
        'allowed_commonNames = "seaweedfs"\n' for c in components)
    return f"""# Managed by chicago_crime.devtools.stack (mode 600).
[jwt.signing]
key = "{keys['volume_write']}"
expires_after_seconds = 10
[jwt.signing.read]
key = "{keys['volume_read']}"
expires_after_seconds = 10
[jwt.filer_signing]
key = "{keys['filer_write']}"
expires_after_seconds = 10
[jwt.filer_signing.read]
key = "{keys['filer_read']}"
expires_after_seconds = 10
[access]
ui = false
[filer.expose_directory_metadata]
enabled = false
[grpc]
ca = "{certs['ca']}"
{grpc}
[grpc.client]
cert = "{certs['cert']}"
key = "{certs['key']}"
"""


def internal_keys(path: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Keys only the services use among themselves (never shown to anyone): generated once into
    ``path`` (mode 600), missing ones added."""
    try:
        keys = json.loads(path.read_text())
    except FileNotFoundError:
        keys = {}
    missing = [n for n in names if not keys.get(n)]
    if missing:
        keys.update({n: secrets.token_urlsafe(32) for n in missing})
        path.write_text(json.dumps(keys))
        path.chmod(0o600)
    return keys


# -- MLflow ------------------------------------------------------------------------------------
def mlflow_auth_ini(settings: Settings, database_uri: str) -> str:
    """The basic-auth app's configuration (``MLFLOW_AUTH_CONFIG_PATH``), rendered by the same
    code as the Compose image's (``mlflow_accounts.auth_ini``). No admin password in it: the
    stack writes the accounts into the user store itself (``sync_mlflow_accounts``)."""
    return _auth_ini(database_uri, settings.mlflow_admin_username)


def mlflow_accounts(settings: Settings) -> list[tuple[str, str, bool, str | None]]:
    """(username, password, is_admin, permission on every experiment and model) per account."""
    accounts = [
        (settings.mlflow_admin_username, settings.mlflow_admin_password, True, None),
        (settings.mlflow_tracking_username, settings.mlflow_tracking_password, False,
         PLATFORM_PERMISSION),
        (settings.mlflow_serving_username, settings.mlflow_serving_password, False,
         SERVING_PERMISSION),
    ]
    out = []
    for user, password, admin, permission in accounts:
        if not user or not _secret(password):
            raise ValueError(f"MLflow account {user!r} has no password: run "
                             "`make install-native` to generate it")
        out.append((user, _secret(password), admin, permission))
    return out


def sync_mlflow_accounts(settings: Settings, database_uri: str) -> list[str]:
    """Create or update MLflow's accounts in its user store; returns what changed (names only).

    Runs before the MLflow server starts (the store's own migrations create its tables), so the
    server never bootstraps an admin from a default and a password changed in ``.env`` wins.
    """
    return _sync_accounts(database_uri, mlflow_accounts(settings))
