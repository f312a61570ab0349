"""Building a package folder under the cache's ``tmp/`` from local files, with the package limits.

Shared by every kind of source: a folder, a description file, an unpacked zip. A package holds
only what it declares: its description and the files the description names (weights and their
architecture sources, test and sample tensors, documentation, covers, attachments, dependency
files). Other files of the folder or zip are left out, and the log and a ``drop`` progress event
say how many. A description naming a file outside its folder (an absolute path, ``..``, a
``file:`` URL, or a link that leaves the folder) is refused, with the same message whether that
file exists or not.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from modelrunner import cache_layout, errors, types
from modelrunner.entry_server.limits import over_limit
from modelrunner.entry_server.packages import descriptions, yaml_limits
from modelrunner.progress import ProgressCallback, StageProgress, no_progress
from modelrunner.safe_zip import safe_entry_path, unpack_zip
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)

ReferenceLister = Callable[[Path], list[str] | None]
"""Lists the files a description names (None: too broken to tell): bioimageio.spec's reading of
an untrusted description, which the registry runs in a bounded worker process
(``description_jobs.referenced_files``); in process by default."""

YAML_SUFFIXES = (".yaml", ".yml")
MAX_LOGGED_NAMES = 5
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
            raise self.exceeded(name)

    def exceeded(self, name: str) -> errors.ResourceExhaustedError:
        """The error for a package that passes ``max_unpacked_bytes`` at file ``name``."""
        return over_limit(
            "max_unpacked_bytes",
            self.max_bytes,
            f"package exceeds the limit of {self.max_bytes} bytes "
            f"(setting max_unpacked_bytes) at {name!r}",
            entry=name,
        )


def is_zip(path: Path) -> bool:
    return path.suffix.lower() == ".zip" or zipfile.is_zipfile(path)


def is_yaml(path: Path) -> bool:
    return path.suffix.lower() in YAML_SUFFIXES


def find_description(folder: Path) -> Path | None:
    """``bioimageio.yaml`` or ``rdf.yaml``, else the only ``*.bioimageio.yaml``, else None.

    A link by one of those names counts whether its target exists or not, so that what it
    points to is judged by where it points (a link out of the folder is refused), never by
    whether it exists there."""
    for name in cache_layout.RDF_NAMES:
        if (folder / name).is_symlink():
            return folder / name
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
    *,
    references: ReferenceLister = descriptions.referenced_files,
) -> tuple[Path, Path]:
    """Unpack a zip package into ``dest/unpacked``, then move its description and the files it
    names to ``dest/package``; returns that package root and its description."""
    unpacked = dest / "unpacked"
    unpacked.mkdir(parents=True, exist_ok=True)
    unpack_zip(
        archive,
        unpacked,
        max_bytes=settings.max_unpacked_bytes,
        max_files=settings.max_package_files,
        max_ratio=settings.max_compression_ratio,
        ratio_min_bytes=settings.compression_ratio_min_bytes,
        progress=progress,
    )
    root, rdf = normalize_package(unpacked, origin)
    package = dest / "package"
    staged_rdf = stage_declared_files(
        root, rdf, package, settings, progress, move=True, origin=origin, references=references
    )
    shutil.rmtree(unpacked, ignore_errors=True)
    return package, staged_rdf


def copy_package_folder(
    src: Path,
    dest: Path,
    settings: Settings,
    origin: str,
    progress: ProgressCallback = no_progress,
    *,
    references: ReferenceLister = descriptions.referenced_files,
) -> tuple[Path, Path]:
    """Copy a package folder's description and the files it names; returns the package root
    and description in ``dest``."""
    rdf = find_description(src)
    if rdf is None:
        raise errors.InvalidPackageError(
            f"{origin} holds no bioimageio.yaml or rdf.yaml: not a bioimage.io package",
            details={"source": origin},
        )
    staged_rdf = stage_declared_files(
        src, rdf, dest, settings, progress, origin=origin, references=references
    )
    return dest, staged_rdf


def copy_description_and_files(
    rdf_path: Path,
    dest: Path,
    settings: Settings,
    progress: ProgressCallback = no_progress,
    *,
    references: ReferenceLister = descriptions.referenced_files,
) -> tuple[Path, Path]:
    """Copy a description file and the local files it names (relative to it) into ``dest``;
    returns ``dest`` (the package root) and the copied description."""
    staged = stage_declared_files(
        rdf_path.parent,
        rdf_path,
        dest,
        settings,
        progress,
        list_extras=False,
        references=references,
    )
    return dest, staged


def stage_declared_files(
    root: Path,
    rdf_path: Path,
    dest: Path,
    settings: Settings,
    progress: ProgressCallback = no_progress,
    *,
    move: bool = False,
    list_extras: bool = True,
    origin: str = "",
    references: ReferenceLister = descriptions.referenced_files,
) -> Path:
    """Put the description at ``rdf_path`` (in the folder ``root``) and the files it names into
    ``dest``; returns the staged description.

    Files it names that do not exist are left out: checking the description reports them.
    With ``list_extras``, the files of ``root`` it does not name are counted and logged.
    """
    declared = checked_references(
        root, rdf_path, references, yaml_limits.YamlLimits.from_settings(settings)
    )
    dest.mkdir(parents=True, exist_ok=True)
    budget = PackageBudget(settings)
    staged_rdf = dest / staged_description_name(rdf_path.name)
    budget.add(rdf_path.name, rdf_path.stat().st_size)
    _transfer(rdf_path, staged_rdf, move)
    stage = StageProgress(progress, "copy")
    stage.start()
    kept = {rdf_path.relative_to(root).as_posix()}
    for rel in declared:
        src = root / rel
        if not src.is_file():
            continue
        size = src.stat().st_size
        budget.add(rel, size)
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        _transfer(src, target, move)
        kept.add(rel)
        stage.advance(size)
    stage.finish()
    if list_extras:
        dropped = [rel for rel in _walk_files(root) if rel not in kept]
        if dropped:
            logger.info(
                "%s: left out %d file(s) its description does not name: %s%s",
                origin or root,
                len(dropped),
                ", ".join(dropped[:MAX_LOGGED_NAMES]),
                ", ..." if len(dropped) > MAX_LOGGED_NAMES else "",
            )
            progress(
                types.Progress(stage="drop", done=len(dropped), total=len(dropped), unit="files")
            )
    return staged_rdf


def checked_references(
    root: Path,
    rdf_path: Path,
    references: ReferenceLister = descriptions.referenced_files,
    limits: yaml_limits.YamlLimits | None = None,
) -> list[str]:
    """The files the description names, relative to ``root``; InvalidPackageError when one is
    outside ``root``: by its name (absolute, ``..``, ``file:``) or through a link.

    Nothing outside ``root`` is looked at, so the answer never depends on whether a file there
    exists, nor on its content.
    """
    real_root = root.resolve()
    if not rdf_path.resolve().is_relative_to(real_root):
        # the description itself is a link out of the folder: refused before it is read
        raise _outside(rdf_path.name, rdf_path.name, "a link leaving its folder")
    declared = relative_references(rdf_path, references, limits)
    base = rdf_path.parent.relative_to(root)
    checked = []
    for rel in declared:
        rel_to_root = (base / rel).as_posix()
        # resolve(strict=False) follows the links inside the folder without needing the target.
        if not (root / rel_to_root).resolve().is_relative_to(real_root):
            raise _outside(rdf_path.name, rel, "a link leaving its folder")
        checked.append(rel_to_root)
    return checked


def _transfer(src: Path, target: Path, move: bool) -> None:
    if move and not src.is_symlink():
        src.rename(target)
    else:
        shutil.copyfile(src, target)


def _walk_files(root: Path) -> list[str]:
    found = []
    for dirpath, _, filenames in os.walk(root):
        base = Path(dirpath)
        found += [(base / name).relative_to(root).as_posix() for name in filenames]
    return sorted(found)


def staged_description_name(name: str) -> str:
    return name if name in cache_layout.RDF_NAMES else cache_layout.RDF_NAMES[0]


def relative_references(
    rdf_path: Path,
    references: ReferenceLister = descriptions.referenced_files,
    limits: yaml_limits.YamlLimits | None = None,
) -> list[str]:
    """The relative files a description names; refuses names that leave its folder.
    ``limits``: the server's description limits (default: the built-in ones)."""
    yaml_limits.check_description(rdf_path, limits)
    try:
        content = descriptions.read_rdf(rdf_path)
    except descriptions.UnreadableYamlError:
        return []  # validating reports the YAML problem; adding refuses it
    outside = descriptions.outside_references(content)
    if outside:
        raise _outside(rdf_path.name, outside[0], "outside its folder")
    refs = references(rdf_path)
    if refs is None:
        return _candidate_references(content, rdf_path.name)
    safe = []
    for rel in refs:
        try:
            safe.append(safe_entry_path(rel).as_posix())
        except errors.InvalidPackageError as exc:
            raise _outside(rdf_path.name, rel, "outside its folder") from exc
    return [rel for rel in safe if rel != rdf_path.name]


def _candidate_references(content: dict[str, object], rdf_name: str) -> list[str]:
    safe = []
    for candidate in descriptions.candidate_files(content):
        try:
            rel = safe_entry_path(candidate).as_posix()
        except errors.InvalidPackageError:
            continue
        if rel != rdf_name and rel not in safe:
            safe.append(rel)
    return safe


def _outside(rdf_name: str, rel: str, why: str) -> errors.InvalidPackageError:
    return errors.InvalidPackageError(
        f"{rdf_name} names the file {rel!r}, which is {why}: a package may name only files "
        "inside its folder (or http(s) URLs)",
        details={"file": rel},
    )
