"""Data lake I/O on S3 (MinIO in Compose, SeaweedFS natively, moto in unit tests).

All reads and writes of the platform go through :class:`Lake`, so one boto3 code path is
exercised by every way of running. Objects are written whole (an S3 PUT is atomic), so a
failed task never leaves a half-written object behind.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import boto3
import pandas as pd
from botocore.config import Config
from botocore.exceptions import ClientError

from chicago_crime import serialization
from chicago_crime.config import Settings, get_settings

log = logging.getLogger(__name__)


def s3_client(settings: Settings | None = None) -> Any:
    """A boto3 S3 client configured from settings (endpoint, keys, region, retries)."""
    s = settings or get_settings()
    return boto3.client(
        "s3",
        endpoint_url=s.aws_endpoint_url_s3 or None,
        aws_access_key_id=s.aws_access_key_id,
        aws_secret_access_key=s.aws_secret_access_key.get_secret_value(),
        region_name=s.aws_default_region,
        config=Config(
            retries={"max_attempts": 5, "mode": "standard"},
            s3={"addressing_style": "path"},
            connect_timeout=10,
            read_timeout=120,
        ),
    )


class Lake:
    """A bucket of the data lake with typed helpers (CSV, Parquet, JSON, fitted objects)."""

    def __init__(
        self, bucket: str | None = None, client: Any | None = None,
        settings: Settings | None = None,
    ) -> None:
        s = settings or (None if (bucket and client) else get_settings())
        self.bucket = bucket or s.data_repo_bucket_name  # type: ignore[union-attr]
        self.client = client or s3_client(s)

    # -- bucket -------------------------------------------------------------------------------
    def ensure_bucket(self) -> bool:
        """Create the bucket if missing. Returns True when it was created."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as exc:
            if exc.response["Error"]["Code"] not in {"404", "NoSuchBucket", "NotFound"}:
                raise
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:  # created concurrently by another task
            if exc.response["Error"]["Code"] not in {"BucketAlreadyOwnedByYou",
                                                       "BucketAlreadyExists"}:
                raise
            return False
        log.info("created bucket %s", self.bucket)
        return True

    def set_expiry(self, prefix: str, days: int, rule_id: str = "expire-temporary") -> None:
        """Expire objects under ``prefix`` (and only there) after ``days`` days."""
        if not prefix or prefix == "/":
            raise ValueError("refusing an expiry rule on the whole bucket")
        self.client.put_bucket_lifecycle_configuration(
            Bucket=self.bucket,
            LifecycleConfiguration={"Rules": [{
                "ID": rule_id,
                "Filter": {"Prefix": prefix},
                "Status": "Enabled",
                "Expiration": {"Days": days},
            }]},
        )

    def lifecycle_rules(self) -> list[dict[str, Any]]:
        try:
            conf = self.client.get_bucket_lifecycle_configuration(Bucket=self.bucket)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "NoSuchLifecycleConfiguration":
                return []
            raise
        return list(conf.get("Rules", []))

    # -- raw objects --------------------------------------------------------------------------
    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream",
                  ) -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] in {"404", "NoSuchKey", "NotFound"}:
                return False
            raise

    def etag(self, key: str) -> str:
        return self.client.head_object(Bucket=self.bucket, Key=key)["ETag"].strip('"')

    def iter_keys(self, prefix: str = "") -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def list_keys(self, prefix: str = "") -> list[str]:
        return sorted(self.iter_keys(prefix))

    def snapshot(self, prefix: str = "", exclude: tuple[str, ...] = ()) -> dict[str, str]:
        """Key -> ETag for every object under ``prefix`` but those under ``exclude`` (to prove
        reruns change nothing)."""
        out: dict[str, str] = {}
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                if not obj["Key"].startswith(exclude):
                    out[obj["Key"]] = obj["ETag"].strip('"')
        return out

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def delete_prefix(self, prefix: str) -> int:
        if not prefix:
            raise ValueError("refusing to delete the whole bucket")
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), 1000):
            chunk = keys[start:start + 1000]
            self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in chunk]}
            )
        return len(keys)

    # -- typed helpers ------------------------------------------------------------------------
    @staticmethod
    def parquet_bytes(df: pd.DataFrame) -> bytes:
        """``df`` as Parquet bytes (what :meth:`write_parquet` stores)."""
        buf = io.BytesIO()
        df.to_parquet(buf, index=False, engine="pyarrow")
        return buf.getvalue()

    @staticmethod
    def json_bytes(obj: Any) -> bytes:
        """``obj`` as the JSON bytes :meth:`write_json` stores (sorted keys, indented)."""
        return json.dumps(obj, indent=2, sort_keys=True, default=str).encode("utf-8")

    def write_csv(self, key: str, df: pd.DataFrame) -> None:
        self.put_bytes(key, df.to_csv(index=False).encode("utf-8"), "text/csv")

    def read_csv(self, key: str, **kwargs: Any) -> pd.DataFrame:
        return pd.read_csv(io.BytesIO(self.get_bytes(key)), **kwargs)

    def write_parquet(self, key: str, df: pd.DataFrame) -> None:
        self.put_bytes(key, self.parquet_bytes(df), "application/vnd.apache.parquet")

    def read_parquet(self, key: str) -> pd.DataFrame:
        return pd.read_parquet(io.BytesIO(self.get_bytes(key)), engine="pyarrow")

    def write_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, self.json_bytes(obj), "application/json")

    def read_json(self, key: str) -> Any:
        return json.loads(self.get_bytes(key))

    def write_object(self, key: str, obj: Any) -> None:
        """Persist a fitted object with skops (:mod:`chicago_crime.serialization`): loadable
        without pickle, same object -> same bytes."""
        self.put_bytes(key, serialization.dumps(obj), "application/octet-stream")

    def read_object(self, key: str) -> Any:
        """A fitted object written by :meth:`write_object`; only trusted types are loaded
        (skops with :func:`chicago_crime.serialization.trusted_types`: nothing in the lake is
        ever unpickled)."""
        return serialization.loads(self.get_bytes(key))
