"""Packages uploaded by clients, kept in ``uploads/<upload id>/<file name>`` until added or expired.

The size limit is enforced while receiving (the partial file is removed), the declared size and
sha256 are checked at the end, and uploads older than ``upload_ttl_s`` are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from modelrunner import cache_layout, errors
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL_PREFIX = ".partial-"


@dataclass(frozen=True)
class UploadHeader:
    """What the client says is coming: file name, size (0: unknown) and sha256 ("": unknown)."""

    filename: str
    size_bytes: int = 0
    sha256: str = ""


@dataclass(frozen=True)
class StoredUpload:
    upload_id: str
    path: Path
    size_bytes: int
    sha256: str


def safe_filename(name: str) -> str:
    """The upload's file name, refusing anything that is not a plain file name."""
    name = name.strip()
    if not name:
        return "package"
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith(_PARTIAL_PREFIX):
        raise errors.InvalidArgumentError(
            f"upload file name {name!r} must be a plain file name without folders",
            details={"filename": name},
        )
    if any(ord(c) < 32 for c in name) or len(name) > 255:
        raise errors.InvalidArgumentError(
            f"upload file name {name!r} is not a valid file name", details={"filename": name}
        )
    return name


class UploadStore:
    def __init__(self, settings: Settings) -> None:
        self.directory = cache_layout.uploads_dir(settings.cache_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._max_bytes = settings.max_upload_bytes
        self._ttl_s = settings.upload_ttl_s
        self.purge_expired()

    def receive(self, header: UploadHeader, chunks: Iterable[bytes]) -> StoredUpload:
        """Store the chunks as a new upload; removes everything when a check fails."""
        filename = safe_filename(header.filename)
        expected_sha = header.sha256.strip().lower()
        if expected_sha and not _SHA256.match(expected_sha):
            raise errors.InvalidArgumentError(
                f"upload sha256 {header.sha256!r} is not 64 hexadecimal digits"
            )
        if header.size_bytes < 0:
            raise errors.InvalidArgumentError(f"upload size {header.size_bytes} is negative")
        if header.size_bytes > self._max_bytes:
            raise _too_large(self._max_bytes, f"it declares {header.size_bytes} bytes")
        self.purge_expired()
        upload_id = uuid.uuid4().hex
        folder = self.directory / upload_id
        folder.mkdir()
        partial = folder / (_PARTIAL_PREFIX + filename)
        try:
            digest = hashlib.sha256()
            received = 0
            with partial.open("wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self._max_bytes:
                        raise _too_large(self._max_bytes, f"more than {self._max_bytes} bytes sent")
                    digest.update(chunk)
                    out.write(chunk)
            sha256 = digest.hexdigest()
            if received == 0:
                raise errors.InvalidArgumentError(f"upload {filename!r} is empty")
            if header.size_bytes and received != header.size_bytes:
                raise errors.InvalidArgumentError(
                    f"upload {filename!r} is incomplete or too long: the header declares "
                    f"{header.size_bytes} bytes, {received} arrived",
                    details={"expected": header.size_bytes, "got": received},
                )
            if expected_sha and sha256 != expected_sha:
                raise errors.InvalidArgumentError(
                    f"upload {filename!r} does not match its sha256: the header declares "
                    f"{expected_sha}, the bytes that arrived hash to {sha256}",
                    details={"expected": expected_sha, "got": sha256},
                )
            path = partial.rename(folder / filename)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.info("received upload %s (%s, %d bytes)", upload_id, filename, received)
        return StoredUpload(upload_id=upload_id, path=path, size_bytes=received, sha256=sha256)

    def path_of(self, upload_id: str) -> Path:
        """The uploaded file; SourceNotFoundError for unknown or expired uploads."""
        if not _UPLOAD_ID.match(upload_id):
            raise errors.InvalidSourceError(
                f"{upload_id!r} is not an upload id (32 hexadecimal digits from UploadPackage)",
                details={"upload_id": upload_id},
            )
        self.purge_expired()
        folder = self.directory / upload_id
        files = [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []
        complete = [p for p in files if not p.name.startswith(_PARTIAL_PREFIX)]
        if len(complete) != 1:
            raise errors.SourceNotFoundError(
                f"no upload with id {upload_id} (unknown, or expired after {self._ttl_s:g} s)",
                details={"upload_id": upload_id},
            )
        return complete[0]

    def discard(self, upload_id: str) -> None:
        if _UPLOAD_ID.match(upload_id):
            shutil.rmtree(self.directory / upload_id, ignore_errors=True)

    def purge_expired(self) -> int:
        """Delete uploads older than the time to live; returns how many."""
        deadline = time.time() - self._ttl_s
        purged = 0
        for folder in self.directory.iterdir():
            try:
                expired = folder.stat().st_mtime < deadline
            except FileNotFoundError:
                continue
            if not expired:
                continue
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
            purged += 1
        if purged:
            logger.info("deleted %d expired upload(s)", purged)
        return purged


def _too_large(limit: int, why: str) -> errors.ResourceExhaustedError:
    return errors.ResourceExhaustedError(
        f"upload refused: {why}, over the limit of {limit} bytes (setting max_upload_bytes)",
        details={"limit": limit},
    )
