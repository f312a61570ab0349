"""Unpack untrusted zip packages.

Refused, naming the offending entry: paths that leave the target folder (``../``), absolute
paths, links and other special files, encrypted entries, duplicate names and names with control
characters (``InvalidPackageError``); more files than ``max_files`` (``InvalidPackageError``); a
total size over ``max_bytes`` (``ResourceExhaustedError``). The size is checked twice: against
the sizes the archive declares before anything is written, then against the bytes actually
decompressed, so an archive whose headers lie cannot fill the disk.

Zip bombs: an entry, or the whole archive, that unpacks to more than ``max_ratio`` times its
compressed size is refused before anything is written (``ResourceExhaustedError`` naming
``max_compression_ratio``), as is an entry whose decompressed bytes pass that ratio while being
written. Model weights compress 1.1-3x; deflate reaches about 1000x only on runs of one byte, so
entries and archives smaller than ``ratio_min_bytes`` (a small all-zero mask) are not held to it.
"""

from __future__ import annotations

import stat
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from modelrunner import errors
from modelrunner.limits import over_limit
from modelrunner.progress import ProgressCallback, StageProgress, no_progress
from modelrunner.settings import Settings

_CHUNK_BYTES = 1024**2
DEFAULT_MAX_RATIO: float = Settings.model_fields["max_compression_ratio"].default
DEFAULT_RATIO_MIN_BYTES: int = Settings.model_fields["compression_ratio_min_bytes"].default
_ALLOWED_MODES = (0, stat.S_IFREG, stat.S_IFDIR)
"""Unix file types (from the external attributes) we unpack; 0 means "not recorded"."""


def unpack_zip(
    archive: Path,
    dest: Path,
    *,
    max_bytes: int,
    max_files: int,
    max_ratio: float = DEFAULT_MAX_RATIO,
    ratio_min_bytes: int = DEFAULT_RATIO_MIN_BYTES,
    progress: ProgressCallback = no_progress,
) -> list[str]:
    """Unpack ``archive`` into the existing folder ``dest``; returns the files' relative paths."""
    ratio = _RatioLimit(max_ratio, ratio_min_bytes)
    try:
        with zipfile.ZipFile(archive) as zf:
            entries = _checked_entries(zf, max_bytes=max_bytes, max_files=max_files, ratio=ratio)
            declared = sum(info.file_size for info, _ in entries)
            stage = StageProgress(progress, "unpack", total=declared)
            stage.start()
            written: list[str] = []
            for info, rel in entries:
                target = dest.joinpath(*rel.parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                _extract_entry(zf, info, target, stage, max_bytes, ratio)
                written.append(rel.as_posix())
            stage.finish()
            return written
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
        # corrupt or truncated member data, or an unsupported compression method
        raise errors.InvalidPackageError(
            f"{archive.name} is not a valid zip file: {exc}", details={"file": archive.name}
        ) from exc


def safe_entry_path(name: str) -> PurePosixPath:
    """The relative path an archive entry may be unpacked to, or InvalidPackageError."""
    if not name or any(ord(c) < 32 or c == "\x7f" for c in name):
        raise _unsafe(name, "empty name or control characters in the name")
    if "\\" in name:
        # Windows separators would be literal characters here but path separators elsewhere.
        raise _unsafe(name, "backslash in the path")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _unsafe(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _unsafe(name, "path leaves the package folder ('..')")
    if not parts:
        raise _unsafe(name, "empty path")
    return PurePosixPath(*parts)


class _RatioLimit:
    def __init__(self, max_ratio: float, min_bytes: int) -> None:
        self.max_ratio = max_ratio
        self.min_bytes = min_bytes

    def allows(self, unpacked: int, compressed: int) -> bool:
        return unpacked < self.min_bytes or unpacked <= self.max_ratio * max(compressed, 1)

    def refuse(self, what: str, unpacked: int, compressed: int) -> errors.ResourceExhaustedError:
        return over_limit(
            "max_compression_ratio",
            self.max_ratio,
            f"{what} unpacks to {unpacked} bytes from {compressed} compressed, more than "
            f"{self.max_ratio:g} times as many (a zip bomb?)",
            unpacked_bytes=unpacked,
            compressed_bytes=compressed,
        )


def _checked_entries(
    zf: zipfile.ZipFile, *, max_bytes: int, max_files: int, ratio: _RatioLimit
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    infos = zf.infolist()
    files = [i for i in infos if not i.is_dir()]
    if len(files) > max_files:
        raise errors.InvalidPackageError(
            f"package has {len(files)} files, more than the limit of {max_files} "
            "(setting max_package_files)",
            details={"files": len(files), "limit": max_files},
        )
    declared = sum(i.file_size for i in files)
    if declared > max_bytes:
        raise over_limit(
            "max_unpacked_bytes",
            max_bytes,
            f"package would unpack to {declared} bytes, over the limit of {max_bytes} bytes",
            declared_bytes=declared,
        )
    for info in files:
        if not ratio.allows(info.file_size, info.compress_size):
            raise ratio.refuse(f"zip entry {info.filename!r}", info.file_size, info.compress_size)
    compressed = sum(i.compress_size for i in files)
    if not ratio.allows(declared, compressed):
        raise ratio.refuse("the package", declared, compressed)
    seen: set[PurePosixPath] = set()
    checked = []
    for info in infos:
        rel = safe_entry_path(info.filename)
        mode = stat.S_IFMT(info.external_attr >> 16)
        if mode == stat.S_IFLNK:
            raise _unsafe(info.filename, "symbolic link")
        if mode not in _ALLOWED_MODES:
            raise _unsafe(info.filename, f"special file (mode {oct(mode)})")
        if info.flag_bits & 0x1:
            raise _unsafe(info.filename, "encrypted entry")
        if rel in seen and not info.is_dir():
            raise _unsafe(info.filename, "duplicate entry")
        seen.add(rel)
        checked.append((info, rel))
    return checked


def _extract_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    stage: StageProgress,
    max_bytes: int,
    ratio: _RatioLimit,
) -> None:
    # "xb": an entry may never overwrite a file (or a folder turned file) written before it.
    try:
        out = target.open("xb")
    except (FileExistsError, IsADirectoryError, NotADirectoryError) as exc:
        raise _unsafe(info.filename, "collides with another entry") from exc
    written = 0
    with out, zf.open(info) as src:
        while chunk := src.read(_CHUNK_BYTES):
            if stage.done + len(chunk) > max_bytes:
                raise over_limit(
                    "max_unpacked_bytes",
                    max_bytes,
                    f"zip entry {info.filename!r} unpacks to more than its archive declares; "
                    f"the package exceeds the limit of {max_bytes} bytes",
                    entry=info.filename,
                )
            written += len(chunk)
            if not ratio.allows(written, info.compress_size):
                raise ratio.refuse(f"zip entry {info.filename!r}", written, info.compress_size)
            out.write(chunk)
            stage.advance(len(chunk))


def _unsafe(name: str, why: str) -> errors.InvalidPackageError:
    return errors.InvalidPackageError(f"unsafe zip entry {name!r}: {why}", details={"entry": name})
