"""The content-addressed model cache: ``models/<id>/`` folders plus their index.

* Packages are staged under ``tmp/`` and renamed into ``models/<id>`` (atomic on one file
  system): a crash never leaves a half-written model, and when two adds of the same content race,
  the rename of the second fails and it uses the first one's folder.
* The index survives restarts; at start, stale ``tmp/`` leftovers are removed, entries without a
  folder are dropped, every entry's file sizes are checked against its manifest, and folders
  without an entry are reported by :meth:`ModelCache.unindexed_folders` for the registry to
  re-index (a missing or unreadable index is thereby rebuilt).
* A size budget with least-recently-used eviction that never evicts a model in use: pinned by an
  ongoing operation (:meth:`ModelCache.pinned`) or reported loaded by a runtime. Uploads not yet
  added count in the budget too (:meth:`ModelCache.reserve`).
* Corruption: a model's files are hashed in full the first time it is served by this process
  (:meth:`ModelCache.ensure_servable`) and on demand (:meth:`ModelCache.verify`); a mismatch is a
  ``CorruptModelError`` naming the file, and adding the same package again repairs the entry.
"""

from __future__ import annotations

import logging
import shutil
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelrunner import cache_layout, errors, types
from modelrunner.entry_server.packages.cache_index import (
    CacheIndex,
    IndexEntry,
    IndexUnreadableError,
)
from modelrunner.entry_server.packages.content_hash import (
    FileRecord,
    find_content_mismatch,
    find_size_mismatch,
)
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def short_id(model_id: str) -> str:
    return model_id[:12]


class ModelCache:
    """The cache directory of ``settings.cache_dir``. Safe to use from many threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        in_use_elsewhere: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        """``in_use_elsewhere`` returns the ids of models loaded by runtimes (never evicted)."""
        self.directory = settings.cache_dir
        self.budget_bytes = settings.cache_budget_bytes
        self._in_use_elsewhere = in_use_elsewhere
        self._lock = threading.RLock()
        self._pins: Counter[str] = Counter()
        self._verified: set[str] = set()
        self._reserved = 0
        """Bytes outside ``models/`` counted in the budget: uploads kept or being received."""
        for folder in (
            cache_layout.models_dir(self.directory),
            cache_layout.uploads_dir(self.directory),
            cache_layout.zips_dir(self.directory),
        ):
            folder.mkdir(parents=True, exist_ok=True)
        self._clean_staging()
        self._index = self._open_index()
        self._check_entries()

    def close(self) -> None:
        self._index.close()

    # -- start-up ---------------------------------------------------------------------------------

    def _clean_staging(self) -> None:
        staging = cache_layout.staging_dir(self.directory)
        if staging.exists():
            leftovers = list(staging.iterdir())
            if leftovers:
                logger.info("removing %d stale staging leftovers in %s", len(leftovers), staging)
            shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True, exist_ok=True)

    def _open_index(self) -> CacheIndex:
        path = cache_layout.index_path(self.directory)
        try:
            return CacheIndex(path)
        except IndexUnreadableError as exc:
            logger.warning("%s; moving it aside and rebuilding the index from models/", exc)
            for suffix in ("", "-wal", "-shm"):
                broken = path.with_name(path.name + suffix)
                if broken.exists():
                    broken.replace(broken.with_name(broken.name + ".unreadable"))
            return CacheIndex(path)

    def _check_entries(self) -> None:
        for entry in self._index.entries():
            folder = self.model_dir(entry.id)
            if not folder.is_dir():
                logger.warning("model %s: folder missing; dropping its entry", short_id(entry.id))
                self._index.delete(entry.id)
                continue
            problem = find_size_mismatch(folder, self._index.manifest(entry.id))
            if problem is not None:
                logger.warning("model %s is corrupt: %s", short_id(entry.id), problem)
                self._index.mark_corrupt(entry.id, problem)

    def unindexed_folders(self) -> list[Path]:
        """Folders in ``models/`` without an index entry (after a crash or a lost index)."""
        known = {e.id for e in self._index.entries()}
        models = cache_layout.models_dir(self.directory)
        return sorted(p for p in models.iterdir() if p.is_dir() and p.name not in known)

    def adopt(
        self,
        info: types.ModelInfo,
        rdf: dict[str, Any],
        manifest: list[FileRecord],
        aliases: set[str],
    ) -> None:
        """Index a folder already in ``models/<info.id>`` (re-indexing)."""
        self._index.put(info, rdf, manifest, aliases)
        with self._lock:
            self._verified.add(info.id)

    def discard_folder(self, folder: Path, reason: str) -> None:
        logger.warning("removing %s from the cache: %s", folder, reason)
        self._delete_tree(self._move_to_trash(folder))

    # -- staging ----------------------------------------------------------------------------------

    def staging_dir(self, purpose: str) -> Path:
        """A new, empty folder under ``tmp/``; the caller removes it with :meth:`discard`."""
        path = cache_layout.staging_dir(self.directory) / f"{purpose}-{uuid.uuid4().hex}"
        path.mkdir(parents=True)
        return path

    def discard(self, path: Path | None) -> None:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    # -- queries ----------------------------------------------------------------------------------

    def model_dir(self, model_id: str) -> Path:
        return cache_layout.model_dir(self.directory, model_id)

    def find(self, model_id: str) -> IndexEntry | None:
        return self._index.get(model_id)

    def get(self, model_id: str) -> IndexEntry:
        entry = self._index.get(model_id)
        if entry is None:
            raise errors.ModelNotFoundError(
                f"no model with id {model_id}", details={"model_id": model_id}
            )
        return entry

    def entries(self) -> list[IndexEntry]:
        return self._index.entries()

    def ids_with_prefix(self, prefix: str) -> list[str]:
        return self._index.ids_with_prefix(prefix)

    def ids_with_alias(self, alias: str) -> list[str]:
        return self._index.ids_with_alias(alias)

    def rdf(self, model_id: str) -> dict[str, Any]:
        rdf = self._index.rdf(model_id)
        if rdf is None:
            raise errors.ModelNotFoundError(f"no model with id {model_id}")
        return rdf

    def touch(self, model_id: str) -> None:
        """Mark the model as just used (least-recently-used eviction order)."""
        self._index.touch(model_id, utc_now())

    def info(self) -> types.CacheInfo:
        return types.CacheInfo(
            directory=str(self.directory),
            used_bytes=self._index.used_bytes(),
            budget_bytes=self.budget_bytes,
            models=len(self._index.entries()),
        )

    # -- adding -----------------------------------------------------------------------------------

    def store(
        self,
        staged_root: Path,
        info: types.ModelInfo,
        rdf: dict[str, Any],
        manifest: list[FileRecord],
        aliases: set[str],
    ) -> tuple[types.ModelInfo, bool]:
        """Move the staged package into the cache; returns the entry and whether it is new.

        ``info.id`` must be the package id of ``staged_root``'s content. The staged folder is
        moved away when used; the caller discards its staging folder either way.
        """
        model_id = info.id
        if info.size_bytes > self.budget_bytes:
            raise errors.ResourceExhaustedError(
                f"model {short_id(model_id)} takes {info.size_bytes} bytes, more than the whole "
                f"cache budget of {self.budget_bytes} bytes (setting cache_budget_bytes)",
                details={"size_bytes": info.size_bytes, "budget_bytes": self.budget_bytes},
            )
        trash: list[Path | None] = []
        try:
            with self._lock:
                existing = self._index.get(model_id)
                if existing is not None and existing.corrupt is None:
                    self.touch(model_id)
                    return self.get(model_id).info, False
                if existing is not None:
                    logger.info("repairing corrupt model %s", short_id(model_id))
                    self._forget(model_id, trash)
                self._make_room(info.size_bytes, trash, what="the model")
                self._move_into_place(staged_root, model_id, manifest, trash)
                now = utc_now()
                info = info.model_copy(update={"added_at": now, "last_used_at": now})
                self._index.put(info, rdf, manifest, aliases)
                self._verified.add(model_id)
                return info, True
        finally:
            for path in trash:
                self._delete_tree(path)

    def _move_into_place(
        self, staged_root: Path, model_id: str, manifest: list[FileRecord], trash: list[Path | None]
    ) -> None:
        target = self.model_dir(model_id)
        try:
            staged_root.rename(target)
            return
        except OSError:
            if not target.is_dir():
                raise
        # Another process renamed the same content first, or a crash left an unindexed folder.
        problem = find_size_mismatch(target, manifest)
        if problem is None:
            return
        logger.warning("replacing leftover folder of model %s: %s", short_id(model_id), problem)
        trash.append(self._move_to_trash(target))
        staged_root.rename(target)

    def _make_room(self, size: int, trash: list[Path | None], *, what: str) -> None:
        used = self._index.used_bytes() + self._reserved
        if used + size <= self.budget_bytes:
            return
        busy = self._busy_ids()
        victims: list[tuple[str, int]] = []
        for model_id, model_size in self._index.least_recently_used():
            if used + size <= self.budget_bytes:
                break
            if model_id in busy:
                continue
            victims.append((model_id, model_size))
            used -= model_size
        if used + size > self.budget_bytes:
            raise errors.ResourceExhaustedError(
                f"cache full: {what} needs {size} bytes but only "
                f"{max(self.budget_bytes - used, 0)} of the budget of {self.budget_bytes} bytes "
                f"can be freed; {len(busy)} model(s) in use cannot be evicted "
                "(setting cache_budget_bytes)",
                details={
                    "size_bytes": size,
                    "budget_bytes": self.budget_bytes,
                    "limit": "cache_budget_bytes",
                    "limit_value": self.budget_bytes,
                },
            )
        for model_id, model_size in victims:
            logger.info("evicting model %s (%d bytes, least recently used)", model_id, model_size)
            self._forget(model_id, trash)

    # -- bytes outside models/ (uploads) ----------------------------------------------------------

    def reserve(self, size: int) -> None:
        """Count ``size`` more bytes of an upload in the budget, evicting least recently used
        models not in use to make room; ResourceExhaustedError (``cache_budget_bytes``) when
        that cannot free enough."""
        if size <= 0:
            return
        trash: list[Path | None] = []
        try:
            with self._lock:
                self._make_room(size, trash, what="the upload")
                self._reserved += size
        finally:
            for path in trash:
                self._delete_tree(path)

    def release(self, size: int) -> None:
        """Stop counting ``size`` bytes reserved with :meth:`reserve`."""
        with self._lock:
            self._reserved = max(self._reserved - size, 0)

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return self._reserved

    # -- use --------------------------------------------------------------------------------------

    @contextmanager
    def pinned(self, model_id: str) -> Iterator[None]:
        """Keep the model from being evicted or removed while the block runs."""
        with self._lock:
            self._pins[model_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[model_id] -= 1
                if self._pins[model_id] <= 0:
                    del self._pins[model_id]

    def _busy_ids(self) -> set[str]:
        with self._lock:
            return set(self._pins) | set(self._in_use_elsewhere())

    def busy_reason(self, model_id: str, *, runtimes: bool = True) -> str | None:
        with self._lock:
            if self._pins.get(model_id):
                return "an ongoing operation is using it"
        if runtimes and model_id in set(self._in_use_elsewhere()):
            return "a runtime has it loaded"
        return None

    def verify(self, model_id: str, *, full: bool = True) -> None:
        """Check the model's files against its manifest (sizes, and hashes when ``full``)."""
        entry = self.get(model_id)
        manifest = self._index.manifest(model_id)
        folder = self.model_dir(model_id)
        check = find_content_mismatch if full else find_size_mismatch
        problem = check(folder, manifest)
        if problem is not None:
            self._index.mark_corrupt(model_id, problem)
            with self._lock:
                self._verified.discard(model_id)
            raise _corrupt(model_id, problem)
        if full:
            with self._lock:
                self._verified.add(model_id)
            if entry.corrupt is not None:
                logger.info("model %s verified intact again", short_id(model_id))
                self._index.mark_corrupt(model_id, None)

    def ensure_servable(self, model_id: str) -> Path:
        """The model's folder, verified in full once per process; CorruptModelError otherwise."""
        entry = self.get(model_id)
        if entry.corrupt is not None:
            raise _corrupt(model_id, entry.corrupt)
        with self._lock:
            verified = model_id in self._verified
        if not verified:
            self.verify(model_id)
        return self.model_dir(model_id)

    # -- removing ---------------------------------------------------------------------------------

    def remove(self, model_id: str, *, runtimes_unloaded: bool = False) -> int:
        """Remove the model; returns the bytes freed. ModelInUseError while it is in use
        (``runtimes_unloaded``: the runtimes were told to unload it, only this service's own
        operations count)."""
        trash: list[Path | None] = []
        with self._lock:
            entry = self.get(model_id)
            reason = self.busy_reason(model_id, runtimes=not runtimes_unloaded)
            if reason is not None:
                raise errors.ModelInUseError(
                    f"model {model_id} cannot be removed now: {reason}",
                    details={"model_id": model_id},
                )
            self._forget(model_id, trash)
        for path in trash:
            self._delete_tree(path)
        return entry.info.size_bytes

    def _forget(self, model_id: str, trash: list[Path | None]) -> None:
        """Drop the entry and move its folder to the trash (call with the lock held)."""
        self._index.delete(model_id)
        self._verified.discard(model_id)
        trash.append(self._move_to_trash(self.model_dir(model_id)))
        (cache_layout.zips_dir(self.directory) / f"{model_id}.zip").unlink(missing_ok=True)

    def _move_to_trash(self, folder: Path) -> Path | None:
        # A rename is atomic: the model disappears from models/ at once, then is deleted slowly.
        if not folder.exists():
            return None
        trash = cache_layout.staging_dir(self.directory) / f"trash-{uuid.uuid4().hex}"
        folder.rename(trash)
        return trash

    @staticmethod
    def _delete_tree(path: Path | None) -> None:
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)


def _corrupt(model_id: str, problem: str) -> errors.CorruptModelError:
    return errors.CorruptModelError(
        f"model {model_id} is corrupt: {problem}; remove it, or add its package again to repair it",
        details={"model_id": model_id, "problem": problem},
    )
