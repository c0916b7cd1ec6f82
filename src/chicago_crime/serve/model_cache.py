"""The last good champion on local disk, so the server can start while MLflow is down.

After a version passed every check (:mod:`chicago_crime.model.artifact`) and went live, the
server writes what it needs to serve it again: the skops bytes (``<name>-<sha256>.skops``)
and a small JSON document (``<name>.json``: name, version, run id, version tags, the serving
check and the sha256 of the bytes). Each file is written to a temporary name, flushed and
renamed over the old one, the bytes before the document that points at them, so a crash
leaves either the old copy or the new one, never half of one; several server processes may
write the same copy. Reading it back trusts nothing: the digest is compared, the bytes are
loaded with the package's trusted types and the serving check is reproduced again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from chicago_crime.model.artifact import VersionArtifact

log = logging.getLogger(__name__)

FORMAT = 1
#: Other model files younger than this are left alone (another worker may point at one).
KEEP_SECONDS = 300


@dataclass(frozen=True)
class CachedVersion:
    """A version read back from the cache (not yet deserialised or verified)."""

    name: str
    version: str
    run_id: str | None
    source: str
    tags: dict[str, str]
    artifact: VersionArtifact
    saved_at: str


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ModelCache:
    """One model name's last good version in ``folder``."""

    def __init__(self, folder: str | Path, name: str) -> None:
        self.folder = Path(folder).expanduser()
        self.name = name

    @property
    def document(self) -> Path:
        return self.folder / f"{self.name}.json"

    def _blob(self, sha256: str) -> Path:
        return self.folder / f"{self.name}-{sha256}.skops"

    def save(self, *, version: str, run_id: str | None, source: str, tags: dict[str, str],
             artifact: VersionArtifact) -> None:
        """Keep this verified version as the last good copy (atomic; old bytes removed)."""
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        sha = artifact.sha256
        current = self.read_document()
        if current and (current.get("sha256"), current.get("version"), current.get("check")) \
                == (sha, version, artifact.check) and self._blob(sha).is_file():
            return
        blob = self._blob(sha)
        if not blob.is_file():
            _atomic_write(blob, artifact.model_bytes)
        doc = {"format": FORMAT, "name": self.name, "version": version, "run_id": run_id,
               "source": source, "version_tags": tags, "sha256": sha,
               "check": artifact.check, "saved_at": datetime.now(UTC).isoformat()}
        _atomic_write(self.document, json.dumps(doc).encode())
        for old in self.folder.glob(f"{self.name}-*.skops"):
            # another worker process may have just written (and be pointing at) a newer one
            with contextlib.suppress(OSError):
                if old != blob and time.time() - old.stat().st_mtime > KEEP_SECONDS:
                    old.unlink()
        log.info("kept %s version %s as the local copy in %s", self.name, version, self.folder)

    def read_document(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.document.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("format") == FORMAT else None

    def load(self) -> CachedVersion | None:
        """The cached version with its bytes (digest checked), or None when there is none.

        Raises ValueError when a copy exists but is damaged."""
        doc = self.read_document()
        if doc is None:
            return None
        sha = str(doc.get("sha256", ""))
        try:
            data = self._blob(sha).read_bytes()
        except OSError as exc:
            raise ValueError(f"the cached model file of version {doc.get('version')} is "
                             f"missing: {exc}") from exc
        if hashlib.sha256(data).hexdigest() != sha:
            raise ValueError(f"the cached model file of version {doc.get('version')} does "
                             "not match its digest")
        check = doc.get("check")
        if not isinstance(check, dict):
            raise ValueError("the cached copy has no serving check")
        tags = doc.get("version_tags") or {}
        return CachedVersion(
            name=self.name, version=str(doc.get("version")), run_id=doc.get("run_id"),
            source=str(doc.get("source", "")),
            tags={str(k): str(v) for k, v in tags.items()} if isinstance(tags, dict) else {},
            artifact=VersionArtifact(model_bytes=data, check=check),
            saved_at=str(doc.get("saved_at", "")))
