"""Zipped packages (``zips/<id>.zip``) for runtimes on other hosts (``FetchModelPackage``).

Each zip is built once, into ``tmp/`` and renamed into place, with sorted entries, no
compression (weights hardly compress) and fixed timestamps, so it is the same for the same model.
"""

from __future__ import annotations

import shutil
import threading
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from modelrunner import cache_layout
from modelrunner.entry_server.packages.content_hash import hash_file, package_files

_CHUNK_BYTES = 1024**2
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class PackageZip:
    model_id: str
    path: Path
    size_bytes: int
    sha256: str

    def chunks(self, chunk_bytes: int = _CHUNK_BYTES) -> Iterator[bytes]:
        with self.path.open("rb") as f:
            while chunk := f.read(chunk_bytes):
                yield chunk


class PackageZips:
    def __init__(self, cache_dir: Path, new_staging_dir: Callable[[str], Path]) -> None:
        self._dir = cache_layout.zips_dir(cache_dir)
        self._dir.mkdir(parents=True, exist_ok=True)
        self._new_staging_dir = new_staging_dir
        self._lock = threading.Lock()
        self._building: dict[str, threading.Lock] = {}
        self._hashes: dict[tuple[str, int, int], str] = {}

    def get(self, model_id: str, package_dir: Path) -> PackageZip:
        """The zip of the (verified) package folder of ``model_id``, built when missing."""
        with self._lock:
            model_lock = self._building.setdefault(model_id, threading.Lock())
        with model_lock:
            path = self._dir / f"{model_id}.zip"
            if not path.is_file():
                self._build(package_dir, path)
            stat = path.stat()
            key = (model_id, stat.st_size, stat.st_mtime_ns)
            sha256 = self._hashes.get(key)
            if sha256 is None:
                sha256 = self._hashes[key] = hash_file(path)
            return PackageZip(model_id=model_id, path=path, size_bytes=stat.st_size, sha256=sha256)

    def _build(self, package_dir: Path, dest: Path) -> None:
        staging = self._new_staging_dir("zip")
        try:
            partial = staging / dest.name
            with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_STORED) as zf:
                for rel in package_files(package_dir):
                    info = zipfile.ZipInfo(rel, date_time=_ZIP_EPOCH)
                    info.external_attr = 0o100644 << 16
                    # Known sizes let zipfile choose zip64 records for files over 2 GiB.
                    info.file_size = (package_dir / rel).stat().st_size
                    with (package_dir / rel).open("rb") as src, zf.open(info, "w") as out:
                        while chunk := src.read(_CHUNK_BYTES):
                            out.write(chunk)
            partial.replace(dest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
