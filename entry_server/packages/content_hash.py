"""Content addressing of package folders.

A package's id is the sha256 of its *manifest*: one line ``"<sha256 of file>  <relative path>\\n"``
per regular file, sorted by the relative POSIX path (the format of ``sha256sum``). Empty folders
do not count. The same files give the same id whether they came from a folder, a zip or a URL.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from modelrunner import errors
from modelrunner.progress import ProgressCallback, StageProgress, no_progress

_CHUNK_BYTES = 1024**2


@dataclass(frozen=True)
class FileRecord:
    """One file of a package: relative POSIX path, size and sha256 (hex)."""

    path: str
    size: int
    sha256: str


def package_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root``, sorted.

    Anything else (links, sockets, ...) is refused: a cache entry holds plain files only.
    """
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames + filenames:
            path = base / name
            if path.is_symlink() or not (path.is_dir() or path.is_file()):
                rel = path.relative_to(root).as_posix()
                raise errors.InvalidPackageError(
                    f"package entry {rel!r} is not a regular file or folder",
                    details={"entry": rel},
                )
        found.extend((base / name).relative_to(root).as_posix() for name in filenames)
    return sorted(found)


def hash_file(path: Path, progress: StageProgress | None = None) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK_BYTES):
            digest.update(chunk)
            if progress is not None:
                progress.advance(len(chunk))
    return digest.hexdigest()


def manifest_id(manifest: list[FileRecord]) -> str:
    """The package id of a manifest (see the module docstring)."""
    digest = hashlib.sha256()
    for record in sorted(manifest, key=lambda r: r.path):
        digest.update(f"{record.sha256}  {record.path}\n".encode())
    return digest.hexdigest()


def hash_package(
    root: Path, progress: ProgressCallback = no_progress
) -> tuple[str, list[FileRecord]]:
    """The package id and manifest of the folder ``root``."""
    paths = package_files(root)
    sizes = [(root / p).stat().st_size for p in paths]
    stage = StageProgress(progress, "hash", total=sum(sizes))
    stage.start()
    manifest = [
        FileRecord(path=p, size=size, sha256=hash_file(root / p, stage))
        for p, size in zip(paths, sizes, strict=True)
    ]
    stage.finish()
    return manifest_id(manifest), manifest


def find_size_mismatch(root: Path, manifest: list[FileRecord]) -> str | None:
    """A description of the first file that is missing, extra or of the wrong size, or None."""
    expected = {r.path: r for r in manifest}
    try:
        present = package_files(root)
    except (OSError, errors.InvalidPackageError) as exc:
        return f"cannot list the package folder: {exc}"
    for path in present:
        if path not in expected:
            return f"unexpected file {path!r}"
    for record in manifest:
        try:
            size = (root / record.path).stat().st_size
        except OSError:
            return f"file {record.path!r} is missing"
        if size != record.size:
            return f"file {record.path!r} has {size} bytes, expected {record.size}"
    return None


def find_content_mismatch(root: Path, manifest: list[FileRecord]) -> str | None:
    """Like :func:`find_size_mismatch`, then also compares every file's sha256."""
    problem = find_size_mismatch(root, manifest)
    if problem is not None:
        return problem
    for record in manifest:
        try:
            actual = hash_file(root / record.path)
        except OSError as exc:
            return f"file {record.path!r} cannot be read: {exc}"
        if actual != record.sha256:
            return f"file {record.path!r} does not match its sha256"
    return None
