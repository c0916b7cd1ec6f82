"""Stage manifests: a stage's outputs are trusted only as a whole, as one attempt wrote them.

Every ETL stage (:mod:`chicago_crime.stages`) publishes its objects (train/test Parquet, the
enriched CSV, the fitted skops object, the report) under its lake prefix and then, **last**,
``manifest.json`` beside them: each object's key, SHA-256 and size, the digest of the inputs
it was built from (the source stage's manifest digest, or the raw window's checksum), and the
run/attempt that wrote it (DAG, run id, try number, host, pid). Readers (the next stage,
training, the notebooks' helpers in :mod:`chicago_crime.etl`) open a stage with
:meth:`Published.load` and read its objects with :meth:`Published.read`, which checks the
bytes it returns against the manifest: a stage without a manifest is not published
(:class:`StageNotPublished`); an object whose bytes differ is refused
(:class:`StageIntegrityError`), naming the object.

Why no per-attempt folders: the lake keeps one inspectable folder per stage (the course's
layout, browsable in the console), and a rerun of a month rewrites the same keys with the same
bytes, leaving the lake byte-identical (the manifest too: an identical rerun keeps the manifest
of the attempt that first published those bytes). Instead, an attempt first **claims** the
stage by writing ``attempt.json`` (its unique token). Before each write and before publishing
it checks the claim is still its own, so an attempt that Airflow gave up on (a killed worker
whose process still runs) stops at its next write once its successor has claimed the stage,
and never publishes. While an attempt rewrites a stage, readers keep checking the objects
against the manifest still published: identical bytes pass, changed bytes are refused until
the new manifest lands. A write already in flight when the successor claimed the stage either
rewrites the same bytes (the stages are deterministic for the same inputs and seed) or no
longer matches the successor's manifest, and readers then refuse the stage (rerunning it
repairs it): stale, partial or mixed outputs are never used silently.

Hand-written because no library fits: S3 has no multi-object transaction, and the table
formats that add one (Delta, Iceberg) would replace the plain Parquet/CSV/skops layout.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chicago_crime.lake import Lake
from chicago_crime.layout import CLAIM_FILE as CLAIM
from chicago_crime.layout import MANIFEST_FILE as MANIFEST

log = logging.getLogger(__name__)

FORMAT = 1


class StageNotPublished(FileNotFoundError):
    """The stage has no manifest: it never finished, or an attempt is rewriting it."""


class StageIntegrityError(RuntimeError):
    """A published stage does not match its manifest (or its inputs changed since)."""


class SupersededAttempt(RuntimeError):
    """Another attempt claimed the stage: this one must stop writing."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(objects: Mapping[str, Mapping[str, Any]]) -> str:
    """One checksum for a set of objects (names and contents; keys and writers left out, so an
    identical rerun keeps the same digest)."""
    lines = "".join(f"{name}\t{objects[name]['sha256']}\n" for name in sorted(objects))
    return sha256(lines.encode())


def attempt_identity(dag_id: str | None = None, run_id: str | None = None,
                     task_id: str | None = None, try_number: int | None = None,
                     ) -> dict[str, Any]:
    """Who writes: the Airflow task instance when given, else a local run; always the host,
    the process and a unique token."""
    return {"dag_id": dag_id, "run_id": run_id or f"local-{uuid.uuid4().hex[:12]}",
            "task_id": task_id, "try_number": try_number, "host": socket.gethostname(),
            "pid": os.getpid(), "token": uuid.uuid4().hex}


@dataclass
class Publication:
    """One attempt writing one stage: :meth:`claim`, :meth:`put` each object, :meth:`publish`."""

    lake: Lake
    prefix: str
    stage: str
    month: str
    attempt: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def manifest_key(self) -> str:
        return self.prefix + MANIFEST

    @property
    def claim_key(self) -> str:
        return self.prefix + CLAIM

    def claim(self) -> None:
        """Take the stage over (a later attempt's claim supersedes this one)."""
        self.lake.write_json(self.claim_key, self.attempt)

    def check(self) -> None:
        """Raise :class:`SupersededAttempt` when the claim is no longer this attempt's."""
        # no claim: a successor published the stage (and released its claim)
        current = self.lake.read_json(self.claim_key) if self.lake.exists(self.claim_key) \
            else None
        if not isinstance(current, dict) or current.get("token") != self.attempt["token"]:
            holder = current.get("run_id") if isinstance(current, dict) else None
            raise SupersededAttempt(
                f"{self.stage} {self.month}: another attempt ({holder or 'finished'}) claimed "
                f"{self.lake.uri(self.prefix)}; this attempt stops without publishing")

    def put(self, name: str, key: str, data: bytes,
            content_type: str = "application/octet-stream") -> None:
        """Write one object (if the claim is still ours) and record its checksum."""
        self.check()
        self.lake.put_bytes(key, data, content_type)
        self.objects[name] = {"key": key, "sha256": sha256(data), "bytes": len(data)}

    def record(self, name: str, key: str) -> None:
        """Record an object already in place (e.g. a report left as it was)."""
        data = self.lake.get_bytes(key)
        self.objects[name] = {"key": key, "sha256": sha256(data), "bytes": len(data)}

    def publish(self) -> dict[str, Any]:
        """Write the manifest (last) and release the claim; returns the manifest.

        When the published manifest already lists exactly these objects built from the same
        sources (an identical rerun), it is kept as it is: the lake stays byte-identical.
        """
        self.check()
        if self.lake.exists(self.manifest_key):
            with contextlib.suppress(ValueError):
                current = self.lake.read_json(self.manifest_key)
                if isinstance(current, dict) and current.get("objects") == self.objects \
                        and current.get("sources") == self.sources \
                        and current.get("digest") == digest(self.objects):
                    self.lake.delete(self.claim_key)
                    log.info("%s %s unchanged: %s kept", self.stage, self.month,
                             self.lake.uri(self.manifest_key))
                    return current
        manifest = {
            "format": FORMAT, "stage": self.stage, "month": self.month,
            "objects": self.objects, "digest": digest(self.objects), "sources": self.sources,
            "written_by": {k: v for k, v in self.attempt.items() if k != "token"},
            "published_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.lake.write_json(self.manifest_key, manifest)
        self.lake.delete(self.claim_key)
        log.info("%s %s published: %s (%d objects, digest %s)", self.stage, self.month,
                 self.lake.uri(self.manifest_key), len(self.objects), manifest["digest"][:12])
        return manifest


@dataclass(frozen=True)
class Published:
    """A published stage as its manifest describes it."""

    lake: Lake
    prefix: str
    manifest: dict[str, Any]

    @classmethod
    def load(cls, lake: Lake, prefix: str, stage: str) -> Published:
        """The stage's manifest; :class:`StageNotPublished` when it has none."""
        key = prefix + MANIFEST
        if not lake.exists(key):
            claim = prefix + CLAIM
            busy = (f"; {lake.uri(claim)} shows an attempt that has not finished"
                    if lake.exists(claim) else "")
            raise StageNotPublished(f"stage {stage!r} is not published: no {lake.uri(key)}"
                                    f"{busy} (run the ETL for this month)")
        manifest = lake.read_json(key)
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or \
                not isinstance(manifest.get("objects"), dict) or \
                manifest.get("digest") != digest(manifest["objects"]):
            raise StageIntegrityError(f"{lake.uri(key)} is not a valid manifest")
        return cls(lake, prefix, manifest)

    @property
    def stage(self) -> str:
        return str(self.manifest["stage"])

    @property
    def digest(self) -> str:
        return str(self.manifest["digest"])

    @property
    def sources(self) -> dict[str, str]:
        return dict(self.manifest.get("sources") or {})

    def key(self, name: str) -> str:
        try:
            return str(self.manifest["objects"][name]["key"])
        except KeyError:
            raise StageIntegrityError(f"stage {self.stage!r} published no {name!r}") from None

    def read(self, name: str) -> bytes:
        """The object's bytes, checked against the manifest."""
        key = self.key(name)
        data = self.lake.get_bytes(key)
        expected = self.manifest["objects"][name]["sha256"]
        if sha256(data) != expected:
            busy = ("an attempt is rewriting the stage or was interrupted"
                    if self.lake.exists(self.prefix + CLAIM)
                    else "it was changed after the stage was published")
            raise StageIntegrityError(
                f"{self.lake.uri(key)} does not match the manifest of stage {self.stage!r} "
                f"(written by {self.manifest.get('written_by')}): {busy}; rerun the stage")
        return data

    def verify(self) -> None:
        """Check every object of the stage."""
        for name in self.manifest["objects"]:
            self.read(name)

    def require_source(self, name: str, expected: str) -> None:
        """Raise unless the stage was built from ``name`` with digest/checksum ``expected``."""
        if self.sources.get(name) != expected:
            raise StageIntegrityError(
                f"stage {self.stage!r} was built from another {name!r} output than the one "
                f"published now ({self.sources.get(name, 'none')[:12]} != {expected[:12]}): "
                "rerun the ETL for this month")
