"""Resolve a ``ModelSourceSpec`` into a package folder staged under the cache's ``tmp/``.

Kinds of source:

* ``path``: a folder with ``bioimageio.yaml`` / ``rdf.yaml``, the yaml file itself, or a
  ``.zip`` package, on the server, and only under one of ``path_source_roots`` (else
  ``PermissionDeniedError``; by default there are none and clients upload).
* ``url``: an http(s) URL of a zip package or of a yaml description; for a yaml, the files it
  names are downloaded from the same folder.
* ``bioimageio_id``: resolved to ``{bioimageio_base_url}/{id}/files/rdf.yaml`` (bioimageio.spec's
  ``collection_http_pattern``), then as a yaml URL.
* ``upload_id``: a file received by ``UploadPackage`` (a zip or a yaml).

Every kind of source gives a package holding only its description and the files it names (see
:mod:`modelrunner.entry_server.packages.staging`).

Errors: a missing path, URL (HTTP 404), id or upload is ``SourceNotFoundError``; unsafe or
malformed packages are ``InvalidPackageError``; size limits ``ResourceExhaustedError``; see
:mod:`modelrunner.entry_server.packages.downloads` for network failures.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from urllib.parse import quote, urljoin, urlsplit

from modelrunner import errors, types
from modelrunner.entry_server.packages import descriptions, staging, yaml_limits
from modelrunner.entry_server.packages.downloads import Downloader
from modelrunner.entry_server.packages.staging import StagedPackage
from modelrunner.entry_server.packages.uploads import UploadStore
from modelrunner.progress import ProgressCallback, no_progress
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

_BIOIMAGEIO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(/[A-Za-z0-9_.\-]+)*$")

Filler = Callable[[Path], tuple[Path, Path]]
"""Fills a new staging folder; returns the package root and its description file."""


class SourceStager:
    """Stages sources into folders made by ``new_staging_dir`` (under the cache's ``tmp/``)."""

    def __init__(
        self,
        settings: Settings,
        *,
        new_staging_dir: Callable[[str], Path],
        downloader: Downloader,
        uploads: UploadStore,
        list_references: staging.ReferenceLister | None = None,
    ) -> None:
        """``list_references``: how a description's files are found (bioimageio.spec reading
        an untrusted description); the registry runs it in a description worker."""
        self._settings = settings
        self._references = list_references or descriptions.referenced_files
        self._yaml_limits = yaml_limits.YamlLimits.from_settings(settings)
        self._new_staging_dir = new_staging_dir
        self._downloader = downloader
        self._uploads = uploads

    def stage(
        self,
        source: types.ModelSourceSpec,
        progress: ProgressCallback = no_progress,
        *,
        in_place: bool = False,
    ) -> StagedPackage:
        """Stage ``source``. With ``in_place``, local folders and yaml files are not copied
        (validation only reads them)."""
        value = source.value.strip()
        if not value:
            raise errors.InvalidSourceError(f"the model source's {source.kind} is empty")
        if source.kind == "path":
            return self._stage_path(value, progress, in_place)
        if source.kind == "upload_id":
            path = self._uploads.path_of(value)
            return self._stage_file(path, f"upload:{path.name}", progress, in_place)
        if source.kind == "url":
            return self._stage_url(_checked_url(value), value, progress)
        url = self.bioimageio_url(value)
        try:
            return self._stage_url(url, value, progress)
        except errors.SourceNotFoundError as exc:
            if exc.details.get("url") != url:
                raise
            raise errors.SourceNotFoundError(
                f"bioimage.io id {value!r} not found: {exc.message}",
                details={"bioimageio_id": value, "url": url},
            ) from exc

    def bioimageio_url(self, bioimageio_id: str) -> str:
        if not _BIOIMAGEIO_ID.match(bioimageio_id) or ".." in bioimageio_id:
            raise errors.InvalidSourceError(
                f"{bioimageio_id!r} is not a bioimage.io id (such as 'affable-shark')",
                details={"bioimageio_id": bioimageio_id},
            )
        base = self._settings.bioimageio_base_url.rstrip("/")
        return f"{base}/{bioimageio_id}/files/rdf.yaml"

    @staticmethod
    def discard(staged: StagedPackage) -> None:
        if staged.staging_dir is not None:
            shutil.rmtree(staged.staging_dir, ignore_errors=True)

    def _build(self, purpose: str, label: str, fill: Filler) -> StagedPackage:
        folder = self._new_staging_dir(purpose)
        try:
            root, rdf = fill(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return StagedPackage(root, rdf, label, folder)

    # -- local ------------------------------------------------------------------------------------

    def _stage_path(self, value: str, progress: ProgressCallback, in_place: bool) -> StagedPackage:
        path = self._allowed_path(value)
        if not path.exists():
            raise errors.SourceNotFoundError(
                f"no such file or folder on the server: {value}", details={"path": value}
            )
        label = str(path)
        if not path.is_dir():
            return self._stage_file(path, label, progress, in_place)
        rdf = staging.find_description(path)
        if rdf is None:
            raise errors.InvalidPackageError(
                f"folder {path} holds no bioimageio.yaml or rdf.yaml: not a bioimage.io package",
                details={"path": value},
            )
        if in_place:
            staging.checked_references(path, rdf, self._references, self._yaml_limits)
            return StagedPackage(path, rdf, label, None)
        return self._build(
            "folder",
            label,
            lambda dest: staging.copy_package_folder(
                path, dest, self._settings, label, progress, references=self._references
            ),
        )

    def _allowed_path(self, value: str) -> Path:
        """The resolved path, when it lies under one of ``path_source_roots`` (and not in the
        cache); PermissionDeniedError otherwise, before anything there is looked at, so the
        answer does not tell whether it exists."""
        roots = [Path(root).expanduser().resolve() for root in self._settings.path_source_roots]
        details = {"path": value, "setting": "path_source_roots"}
        if not roots:
            raise errors.PermissionDeniedError(
                "this server reads no paths on its own disk (setting path_source_roots is "
                "empty): upload the package instead",
                details=details,
            )
        refused = errors.PermissionDeniedError(
            f"{value} is not under a folder this server reads packages from "
            "(setting path_source_roots): upload the package instead",
            details=details,
        )
        try:
            path = Path(value).expanduser().resolve()
        except (RuntimeError, ValueError, OSError) as exc:  # ~unknown-user, NUL bytes, loops
            raise refused from exc
        cache = self._settings.cache_dir.expanduser().resolve()
        if not any(path.is_relative_to(root) for root in roots) or path.is_relative_to(cache):
            raise refused
        return path

    def _stage_file(
        self, path: Path, label: str, progress: ProgressCallback, in_place: bool
    ) -> StagedPackage:
        if staging.is_zip(path):
            return self._build(
                "zip",
                label,
                lambda dest: staging.unpack_package(
                    path, dest, self._settings, label, progress, references=self._references
                ),
            )
        if staging.is_yaml(path):
            if in_place:
                staging.checked_references(path.parent, path, self._references, self._yaml_limits)
                return StagedPackage(path.parent, path, label, None)
            return self._build(
                "yaml",
                label,
                lambda dest: staging.copy_description_and_files(
                    path, dest, self._settings, progress, references=self._references
                ),
            )
        raise errors.InvalidSourceError(
            f"{label} is neither a folder, a .zip package nor a .yaml description",
            details={"source": label},
        )

    # -- remote -----------------------------------------------------------------------------------

    def _stage_url(self, url: str, label: str, progress: ProgressCallback) -> StagedPackage:
        def fill(folder: Path) -> tuple[Path, Path]:
            downloaded = folder / "download"
            self._downloader.download(url, downloaded, progress=progress)
            package = folder / "package"
            if staging.is_zip(downloaded):
                return staging.unpack_package(
                    downloaded,
                    package,
                    self._settings,
                    label,
                    progress,
                    references=self._references,
                )
            package.mkdir()
            name = PurePosixPath(urlsplit(url).path).name
            rdf = downloaded.rename(package / staging.staged_description_name(name))
            self._download_references(url, rdf, package, progress)
            return package, rdf

        return self._build("url", label, fill)

    def _download_references(
        self, yaml_url: str, rdf: Path, package: Path, progress: ProgressCallback
    ) -> None:
        budget = staging.PackageBudget(self._settings)
        budget.add(rdf.name, rdf.stat().st_size)
        for rel in staging.relative_references(rdf, self._references, self._yaml_limits):
            file_url = urljoin(yaml_url, quote(rel))
            target = package / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self._downloader.download(
                    file_url, target, progress=progress, max_bytes=budget.bytes_left
                )
            except errors.SourceNotFoundError:
                # Checking the description reports the missing file with its location.
                logger.info("%s names %s, which is not there", yaml_url, file_url)
                continue
            except errors.ResourceExhaustedError as exc:
                if budget.bytes_left >= self._settings.max_download_bytes:
                    raise
                raise budget.exceeded(rel) from exc
            budget.add(rel, size)


def _checked_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise errors.InvalidSourceError(f"{url!r} is not an http(s) URL", details={"url": url})
    return url
