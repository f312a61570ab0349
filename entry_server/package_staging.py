"""Building a package folder under the cache's ``tmp/`` from local files, with the package limits.

Shared by every kind of source: copying a folder, copying a description and the files it names,
unpacking a zip, finding the description file in the result.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

from modelrunner import cache_layout, errors
from modelrunner.entry_server import descriptions
from modelrunner.entry_server.progress import ProgressCallback, StageProgress, no_progress
from modelrunner.entry_server.safe_zip import safe_entry_path, unpack_zip
from modelrunner.settings import Settings

YAML_SUFFIXES = (".yaml", ".yml")
MACOS_METADATA = "__MACOSX"


@dataclass(frozen=True)
class StagedPackage:
    """A package folder ready to hash, validate or add."""

    package_dir: Path
    rdf_path: Path
    source: str
    """Where it came from, for ModelInfo.source."""
    staging_dir: Path | None
    """The folder to delete when done; None when the package is read in place."""


class PackageBudget:
    """Counts files and bytes against ``max_package_files`` and ``max_unpacked_bytes``."""

    def __init__(self, settings: Settings) -> None:
        self.max_files = settings.max_package_files
        self.max_bytes = settings.max_unpacked_bytes
        self.files = 0
        self.bytes = 0

    @property
    def bytes_left(self) -> int:
        return max(self.max_bytes - self.bytes, 0)

    def add(self, name: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        if self.files > self.max_files:
            raise errors.InvalidPackageError(
                f"package has more than {self.max_files} files (setting max_package_files); "
                f"refused at {name!r}",
                details={"entry": name, "limit": self.max_files},
            )
        if self.bytes > self.max_bytes:
            raise errors.ResourceExhaustedError(
                f"package exceeds the limit of {self.max_bytes} bytes "
                f"(setting max_unpacked_bytes) at {name!r}",
                details={"entry": name, "limit": self.max_bytes},
            )


def is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)


def is_yaml(path: Path) -> bool:
    return path.suffix.lower() in YAML_SUFFIXES


def find_description(folder: Path) -> Path | None:
    """``bioimageio.yaml`` or ``rdf.yaml``, else the only ``*.bioimageio.yaml``, else None."""
    found = cache_layout.find_rdf(folder)
    if found is not None:
        return found
    named = [p for p in folder.glob("*bioimageio.yaml") if p.is_file()]
    return named[0] if len(named) == 1 else None


def normalize_package(folder: Path, origin: str) -> tuple[Path, Path]:
    """The package root and description file of an unpacked or copied package.

    A zip made by zipping a folder holds that folder: its single top folder is then the root. A
    description named ``*.bioimageio.yaml`` is renamed to ``bioimageio.yaml``, where runtimes look.
    """
    root = folder
    rdf = find_description(root)
    if rdf is None:
        children = [p for p in root.iterdir() if p.name != MACOS_METADATA]
        if len(children) == 1 and children[0].is_dir():
            root = children[0]
            rdf = find_description(root)
    if rdf is None:
        raise errors.InvalidPackageError(
            f"{origin} holds no bioimageio.yaml or rdf.yaml: not a bioimage.io package",
            details={"source": origin},
        )
    if rdf.name not in cache_layout.RDF_NAMES:
        rdf = rdf.rename(root / cache_layout.RDF_NAMES[0])
    return root, rdf


def unpack_package(
    archive: Path,
    dest: Path,
    settings: Settings,
    origin: str,
    progress: ProgressCallback = no_progress,
) -> tuple[Path, Path]:
    dest.mkdir(parents=True, exist_ok=True)
    unpack_zip(
        archive,
        dest,
        max_bytes=settings.max_unpacked_bytes,
        max_files=settings.max_package_files,
        progress=progress,
    )
    return normalize_package(dest, origin)


def copy_package_folder(
    src: Path, dest: Path, settings: Settings, origin: str, progress: ProgressCallback = no_progress
) -> tuple[Path, Path]:
    """Copy a package folder; returns the package root and description in ``dest``."""
    copy_folder(src, dest, settings, progress)
    return normalize_package(dest, origin)


def copy_folder(
    src: Path, dest: Path, settings: Settings, progress: ProgressCallback = no_progress
) -> None:
    """Copy a folder's files; links may only point at files inside it."""
    budget = PackageBudget(settings)
    stage = StageProgress(progress, "copy")
    stage.start()
    real_src = src.resolve()
    for dirpath, dirnames, filenames in os.walk(src):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                raise _unsafe_entry((base / name).relative_to(src).as_posix(), "link to a folder")
        for name in filenames:
            path = base / name
            rel = path.relative_to(src).as_posix()
            safe_entry_path(rel)
            if path.is_symlink():
                target = path.resolve()
                if not target.is_relative_to(real_src) or not target.is_file():
                    raise _unsafe_entry(rel, "link to a file outside the package folder")
            elif not path.is_file():
                raise _unsafe_entry(rel, "not a regular file")
            budget.add(rel, path.stat().st_size)
            target_path = dest / rel
            target_path.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target_path)
            stage.advance(path.stat().st_size)
    stage.finish()


def copy_description_and_files(
    rdf_path: Path, dest: Path, settings: Settings, progress: ProgressCallback = no_progress
) -> tuple[Path, Path]:
    """Copy a description file and the local files it names (relative to it) into ``dest``;
    returns ``dest`` (the package root) and the copied description.

    Files it names that do not exist are left out: checking the description then reports them.
    """
    budget = PackageBudget(settings)
    staged_rdf = dest / staged_description_name(rdf_path.name)
    budget.add(rdf_path.name, rdf_path.stat().st_size)
    shutil.copyfile(rdf_path, staged_rdf)
    stage = StageProgress(progress, "copy")
    stage.start()
    for rel in relative_references(staged_rdf):
        src = rdf_path.parent / rel
        if not src.is_file():
            continue
        budget.add(rel, src.stat().st_size)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        stage.advance(src.stat().st_size)
    stage.finish()
    return dest, staged_rdf


def staged_description_name(name: str) -> str:
    return name if name in cache_layout.RDF_NAMES else cache_layout.RDF_NAMES[0]


def relative_references(rdf_path: Path) -> list[str]:
    """The relative files a description names; refuses names that leave its folder."""
    refs = descriptions.referenced_files(rdf_path)
    if refs is None:
        return []
    safe = []
    for rel in refs:
        try:
            safe.append(safe_entry_path(rel).as_posix())
        except errors.InvalidPackageError as exc:
            raise errors.InvalidPackageError(
                f"{rdf_path.name} names the file {rel!r}, which is outside its folder",
                details={"file": rel},
            ) from exc
    return [rel for rel in safe if rel != rdf_path.name]


def _unsafe_entry(name: str, why: str) -> errors.InvalidPackageError:
    return errors.InvalidPackageError(
        f"unsafe package entry {name!r}: {why}", details={"entry": name}
    )
