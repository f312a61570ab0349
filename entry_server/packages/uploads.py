"""Packages uploaded by clients, kept in ``uploads/<upload id>/<file name>`` until added or expired.

The size limit is enforced while receiving (the partial file is removed), the declared size and
sha256 are checked at the end, and uploads older than ``upload_ttl_s`` are deleted (never one
still being received).

Limits (all ``ResourceExhaustedError`` naming the setting): ``max_upload_bytes`` per upload;
``max_pending_uploads_per_client`` uploads kept or being received per client (the client key is
the caller's, see :func:`modelrunner.entry_server.call_limits.peer_host`; owners are remembered
by this process only: uploads found at start-up belong to nobody); and the bytes of every upload
count in the cache budget (``cache_budget_bytes``) from the moment they are declared or arrive,
until the upload is added, discarded or expired.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelrunner import cache_layout, errors
from modelrunner.entry_server.limits import over_limit
from modelrunner.settings import Settings
from modelrunner.units import MiB

logger = logging.getLogger(__name__)

_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PARTIAL_PREFIX = ".partial-"
RESERVE_STEP_BYTES = 8 * MiB
"""An upload of unknown size takes its room in the cache budget in steps of this size."""


class UploadBudget(Protocol):
    """Where upload bytes are counted (the model cache's budget)."""

    def reserve(self, size: int) -> None: ...

    def release(self, size: int) -> None: ...


class _Unbudgeted:
    def reserve(self, size: int) -> None:
        pass

    def release(self, size: int) -> None:
        pass


@dataclass
class _Pending:
    """An upload kept or being received: whose, and the bytes it holds in the budget."""

    client: str
    reserved: int = 0
    receiving: bool = True


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
    def __init__(self, settings: Settings, *, budget: UploadBudget | None = None) -> None:
        self.directory = cache_layout.uploads_dir(settings.cache_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._max_bytes = settings.max_upload_bytes
        self._ttl_s = settings.upload_ttl_s
        self._max_pending_per_client = settings.max_pending_uploads_per_client
        self._budget: UploadBudget = budget or _Unbudgeted()
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}
        self.purge_expired()
        self._count_existing()

    def receive(
        self, header: UploadHeader, chunks: Iterable[bytes], *, client: str = ""
    ) -> StoredUpload:
        """Store the chunks as a new upload of ``client``; removes everything when a check
        fails."""
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
        pending = self._start_pending(upload_id, client)
        folder = self.directory / upload_id
        try:
            self._reserve(pending, header.size_bytes)
            folder.mkdir()
            partial = folder / (_PARTIAL_PREFIX + filename)
            digest = hashlib.sha256()
            received = 0
            with partial.open("wb") as out:
                for chunk in chunks:
                    received += len(chunk)
                    if received > self._max_bytes:
                        raise _too_large(self._max_bytes, f"more than {self._max_bytes} bytes sent")
                    if received > pending.reserved:
                        self._reserve(pending, max(received, pending.reserved + RESERVE_STEP_BYTES))
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
            self._forget(upload_id)
            raise
        self._received(pending, received)
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
            self._forget(upload_id)

    def pending_count(self, client: str) -> int:
        """Uploads of ``client`` kept or being received."""
        with self._lock:
            return sum(1 for p in self._pending.values() if p.client == client)

    def purge_expired(self) -> int:
        """Delete uploads older than the time to live; returns how many."""
        deadline = time.time() - self._ttl_s
        purged = 0
        with self._lock:
            receiving = {i for i, p in self._pending.items() if p.receiving}
        for folder in self.directory.iterdir():
            if folder.name in receiving:
                continue
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
            self._forget(folder.name)
            purged += 1
        if purged:
            logger.info("deleted %d expired upload(s)", purged)
        return purged

    # -- who holds what ---------------------------------------------------------------------------

    def _start_pending(self, upload_id: str, client: str) -> _Pending:
        with self._lock:
            held = sum(1 for p in self._pending.values() if p.client == client)
            if client and held >= self._max_pending_per_client:
                raise over_limit(
                    "max_pending_uploads_per_client",
                    self._max_pending_per_client,
                    f"upload refused: {client} already has {held} uploads kept or being "
                    f"received, the most one client may have; add or let them expire "
                    f"(after {self._ttl_s:g} s) first",
                    client=client,
                )
            pending = _Pending(client=client)
            self._pending[upload_id] = pending
            return pending

    def _reserve(self, pending: _Pending, total: int) -> None:
        """Hold ``total`` bytes in the budget for ``pending`` (only ever grows)."""
        more = total - pending.reserved
        if more > 0:
            self._budget.reserve(more)
            pending.reserved += more

    def _received(self, pending: _Pending, size: int) -> None:
        if pending.reserved > size:
            self._budget.release(pending.reserved - size)
            pending.reserved = size
        pending.receiving = False

    def _forget(self, upload_id: str) -> None:
        with self._lock:
            pending = self._pending.pop(upload_id, None)
        if pending is not None:
            self._budget.release(pending.reserved)

    def _count_existing(self) -> None:
        """Uploads kept from before a restart hold their bytes in the budget (no owner)."""
        for folder in self.directory.iterdir():
            if not folder.is_dir() or not _UPLOAD_ID.match(folder.name):
                continue
            files = [p for p in folder.iterdir() if p.is_file()]
            if not any(not p.name.startswith(_PARTIAL_PREFIX) for p in files):
                shutil.rmtree(folder, ignore_errors=True)  # interrupted by a stop or crash
                continue
            size = sum(p.stat().st_size for p in files)
            pending = _Pending(client="", receiving=False)
            try:
                self._reserve(pending, size)
            except errors.ResourceExhaustedError:
                logger.warning("deleting upload %s: the cache budget has no room", folder.name)
                shutil.rmtree(folder, ignore_errors=True)
                continue
            with self._lock:
                self._pending[folder.name] = pending


def _too_large(limit: int, why: str) -> errors.ResourceExhaustedError:
    return over_limit(
        "max_upload_bytes", limit, f"upload refused: {why}, over the limit of {limit} bytes"
    )
