"""The model registry: the transport-free logic behind adding, listing, describing, validating
and removing models, and handing packages to runtimes.

It speaks ``modelrunner.types`` only; the gRPC servicer converts. Adding imports bioimageio.spec
(lazily) but never an ML framework.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from modelrunner import cache_layout, errors, types
from modelrunner.entry_server.packages import description_jobs, descriptions, metadata
from modelrunner.entry_server.packages.cache import ModelCache, short_id
from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.entry_server.packages.description_workers import DescriptionWorkers
from modelrunner.entry_server.packages.downloads import Downloader
from modelrunner.entry_server.packages.sources import SourceStager
from modelrunner.entry_server.packages.uploads import StoredUpload, UploadHeader, UploadStore
from modelrunner.entry_server.packages.zips import PackageZip, PackageZips
from modelrunner.progress import ProgressCallback, no_progress
from modelrunner.settings import Settings
from modelrunner.wire import check_model_ref

logger = logging.getLogger(__name__)

MIN_PREFIX_LENGTH = 6
_PIN_POLL_S = 0.05
_HEX = re.compile(r"^[0-9a-f]+$")


@dataclass(frozen=True)
class ModelPackage:
    """A verified package folder in the cache."""

    model_id: str
    path: Path


class ModelRegistry:
    """Models in the cache of ``settings.cache_dir``. Safe to use from many threads."""

    def __init__(
        self,
        settings: Settings,
        *,
        loaded_models: Callable[[], Collection[str]] = frozenset,
        downloader: Downloader | None = None,
    ) -> None:
        """``loaded_models`` returns the ids of models runtimes report loaded (never evicted)."""
        self.settings = settings
        self.cache = ModelCache(settings, in_use_elsewhere=loaded_models)
        self.uploads = UploadStore(settings, budget=self.cache)
        self.description_workers = DescriptionWorkers(settings)
        """Where untrusted descriptions are parsed: bounded in memory and time."""
        self._downloader = downloader or Downloader(settings)
        self._stager = SourceStager(
            settings,
            new_staging_dir=self.cache.staging_dir,
            downloader=self._downloader,
            uploads=self.uploads,
            list_references=self._list_references,
        )
        self._zips = PackageZips(settings.cache_dir, self.cache.staging_dir)
        self._withdrawn: frozenset[str] = frozenset()
        """Models being removed: no reference resolves to them any more."""
        self._withdrawn_lock = threading.Lock()
        self._reindex()

    def _list_references(self, rdf_path: Path) -> list[str] | None:
        """The files a description names, read by bioimageio.spec in a description worker (an
        untrusted description is parsed there, within its memory and time limits)."""
        return self.description_workers.run(
            f"listing the files {rdf_path.name} names",
            description_jobs.referenced_files,
            rdf_path,
        )

    def close(self) -> None:
        self.description_workers.close()
        self._downloader.close()
        self.cache.close()

    # -- adding -----------------------------------------------------------------------------------

    def add(
        self,
        source: types.ModelSourceSpec,
        progress: ProgressCallback = no_progress,
        *,
        keep_upload: bool = False,
    ) -> tuple[types.ModelInfo, bool]:
        """Add a model; returns its info and False when the same content was already there.

        The description is read in a description worker (bounded in memory and time). An
        upload it was added from is discarded, unless ``keep_upload`` (a caller that may have
        to add it again discards it itself: :meth:`discard_upload`).
        """
        self.uploads.purge_expired()  # expired uploads no longer count in the cache budget
        staged = self._stager.stage(source, progress)
        try:
            model_id, manifest = hash_package(staged.package_dir, progress)
            existing = self.cache.find(model_id)
            if existing is not None and existing.corrupt is None:
                self.cache.touch(model_id)
                info, created = self.cache.get(model_id).info, False
            else:
                progress(types.Progress(stage="validate", unit="files", total=len(manifest)))
                reading = self.description_workers.run(
                    f"reading {staged.rdf_path.name}",
                    description_jobs.read_model,
                    staged.rdf_path,
                    manifest,
                    model_id=model_id,
                    package_dir=staged.package_dir,
                    source=staged.source,
                )
                info = reading.info
                aliases = {info.bioimageio_id}
                if source.kind == "bioimageio_id":
                    aliases.add(source.value.strip())
                progress(types.Progress(stage="store", total=info.size_bytes))
                info, created = self.cache.store(
                    staged.package_dir, info, reading.rdf, manifest, aliases
                )
        finally:
            self._stager.discard(staged)
        if not keep_upload:
            self.discard_upload(source)
        logger.info(
            "%s model %s (%s) from %s",
            "added" if created else "already had",
            short_id(info.id),
            info.name,
            staged.source,
        )
        return info, created

    def discard_upload(self, source: types.ModelSourceSpec) -> None:
        """The upload ``source`` names, once added (nothing for other sources)."""
        if source.kind == "upload_id":
            self.uploads.discard(source.value.strip())

    def receive_upload(
        self, header: UploadHeader, chunks: Iterable[bytes], *, client: str = ""
    ) -> StoredUpload:
        """Store an upload of ``client`` (whose pending uploads are counted, see UploadStore)."""
        return self.uploads.receive(header, chunks, client=client)

    def _reindex(self) -> None:
        """Index folders of ``models/`` the index does not know (lost index, crash)."""
        for folder in self.cache.unindexed_folders():
            try:
                model_id, manifest = hash_package(folder)
                if model_id != folder.name:
                    raise errors.CorruptModelError(f"its content hashes to {model_id}")
                rdf_path = cache_layout.find_rdf(folder)
                if rdf_path is None:
                    raise errors.InvalidPackageError("it holds no bioimageio.yaml or rdf.yaml")
                loaded = descriptions.read_checked(rdf_path, manifest)
                info = metadata.model_info(
                    loaded.descr,
                    model_id=model_id,
                    package_dir=folder,
                    format_version=loaded.format_version,
                    source="",
                    size_bytes=sum(r.size for r in manifest),
                )
            except errors.ModelRunnerError as exc:
                self.cache.discard_folder(folder, exc.message)
                continue
            except Exception:  # one odd folder must not keep the service from starting
                logger.exception("cannot re-index %s; leaving it unindexed", folder)
                continue
            when = datetime.fromtimestamp(folder.stat().st_mtime, tz=timezone.utc)
            info = info.model_copy(update={"added_at": when, "last_used_at": when})
            self.cache.adopt(info, loaded.rdf, manifest, {info.bioimageio_id})
            logger.info("re-indexed model %s (%s)", short_id(model_id), info.name)

    # -- reading ----------------------------------------------------------------------------------

    def list_models(self) -> list[types.ModelInfo]:
        return [entry.info for entry in self.cache.entries()]

    def resolve(self, model_ref: str, visible: Callable[[str], bool] | None = None) -> str:
        """The full id of a model given by id, unique id prefix (>= 6 characters) or alias.

        ``visible``: only the models it accepts count (a caller's workspace): the others are
        neither matched nor named in errors, so a prefix or alias cannot probe them."""
        if not model_ref.strip():
            raise errors.InvalidArgumentError(
                "no model given: pass a model id, a unique prefix of one (at least "
                f"{MIN_PREFIX_LENGTH} characters) or a bioimage.io id"
            )
        ref = check_model_ref(model_ref)
        lowered = ref.lower()
        withdrawn = self._withdrawn
        if visible is None:
            keep: Callable[[str], bool] = lambda m: m not in withdrawn  # noqa: E731
        else:
            keep = lambda m: m not in withdrawn and visible(m)  # noqa: E731
        if _HEX.match(lowered) and len(lowered) >= MIN_PREFIX_LENGTH:
            matches = [m for m in self.cache.ids_with_prefix(lowered) if keep(m)]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise _ambiguous(ref, "model id prefix", matches)
        matches = [m for m in self.cache.ids_with_alias(ref) if keep(m)]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise _ambiguous(ref, "bioimage.io id", matches)
        raise model_not_found(ref)

    def describe(self, model_ref: str) -> types.ModelInfo:
        """Full metadata, with the description (RDF) as JSON-able data."""
        model_id = self.resolve(model_ref)
        self.cache.touch(model_id)
        info = self.cache.get(model_id).info
        return info.model_copy(update={"rdf": self.cache.rdf(model_id)})

    def cache_info(self) -> types.CacheInfo:
        return self.cache.info()

    # -- validating and removing ------------------------------------------------------------------

    def validate(
        self,
        source: types.ModelSourceSpec,
        *,
        perform_io_checks: bool = False,
        progress: ProgressCallback = no_progress,
    ) -> types.ValidationReport:
        """Validate a description without adding it; an invalid one gives a failed report.

        It runs in a description worker: over its memory or time limit, ResourceExhaustedError
        naming ``validation_memory_bytes`` or ``validation_timeout_s``.
        """
        staged = self._stager.stage(source, progress, in_place=True)
        try:
            if perform_io_checks:
                descriptions.check_io_fetches(staged.rdf_path, self._downloader.policy)
            return self.description_workers.run(
                f"validating {staged.rdf_path.name}",
                description_jobs.validate,
                staged.rdf_path,
                perform_io_checks=perform_io_checks,
                source=staged.source,
            )
        finally:
            self._stager.discard(staged)

    def remove(self, model_ref: str) -> tuple[str, int]:
        """Remove a model; returns its id and the bytes freed. ModelInUseError while in use."""
        model_id = self.resolve(model_ref)
        freed = self.cache.remove(model_id)
        logger.info("removed model %s (%d bytes)", short_id(model_id), freed)
        return model_id, freed

    @contextmanager
    def withdrawn(self, model_id: str) -> Iterator[None]:
        """While the block runs, no reference resolves to the model (it is being removed):
        routes, descriptions, package fetches and callers' checks find it NOT_FOUND."""
        with self._withdrawn_lock:
            self._withdrawn = self._withdrawn | {model_id}
        try:
            yield
        finally:
            with self._withdrawn_lock:
                self._withdrawn = self._withdrawn - {model_id}

    def remove_withdrawn(self, model_id: str, *, wait_s: float) -> int:
        """Remove a model withdrawn by :meth:`withdrawn` once runtimes no longer serve it;
        returns the bytes freed. Operations of the control service that still use its package
        (a model test, a package fetch) are waited for, at most ``wait_s``: ModelInUseError
        after that, and nothing is removed."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                freed = self.cache.remove(model_id, runtimes_unloaded=True)
                break
            except errors.ModelInUseError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(_PIN_POLL_S)
        logger.info("removed model %s (%d bytes)", short_id(model_id), freed)
        return freed

    def verify(self, model_ref: str) -> str:
        """Hash every file of the model against its manifest; CorruptModelError on a mismatch."""
        model_id = self.resolve(model_ref)
        self.cache.verify(model_id, full=True)
        return model_id

    # -- serving ----------------------------------------------------------------------------------

    def package_dir(self, model_ref: str) -> Path:
        """The verified package folder, for a runtime on this host (see :meth:`use`)."""
        with self.use(model_ref) as package:
            return package.path

    @contextmanager
    def use(self, model_ref: str) -> Iterator[ModelPackage]:
        """Pin the model (no eviction or removal) and yield its verified package folder."""
        model_id = self.resolve(model_ref)
        with self.cache.pinned(model_id):
            path = self.cache.ensure_servable(model_id)
            self.cache.touch(model_id)
            yield ModelPackage(model_id=model_id, path=path)

    @contextmanager
    def package_zip(self, model_ref: str) -> Iterator[PackageZip]:
        """The model's package as a zip, pinned while the block runs (FetchModelPackage)."""
        with self.use(model_ref) as package:
            yield self._zips.get(package.model_id, package.path)


def model_not_found(ref: str) -> errors.ModelNotFoundError:
    return errors.ModelNotFoundError(
        f"no model {errors.clip(ref)!r} in the registry (looked for a model id, a unique "
        f"prefix of one of at least {MIN_PREFIX_LENGTH} characters, and a bioimage.io id)",
        details={"model_id": errors.clip(ref)},
    )


def _ambiguous(ref: str, what: str, matches: list[str]) -> errors.InvalidArgumentError:
    listed = ", ".join(short_id(m) for m in sorted(matches))
    return errors.InvalidArgumentError(
        f"{what} {ref!r} is ambiguous: it matches {len(matches)} models ({listed}); "
        "give the full model id",
        details={"model_id": ref, "matches": ",".join(sorted(matches))},
    )
