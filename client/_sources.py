"""What ``add_model``/``validate`` were given: a URL, a bioimage.io id, a local path or bytes."""

from __future__ import annotations

import io
import os
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from modelrunner.errors import InvalidSourceError, SourceNotFoundError
from modelrunner.types import ModelSourceSpec

SourceLike = str | os.PathLike[str] | bytes
_BIOIMAGEIO_ID = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*(?:/[0-9.]+|/draft)?$")
_CHUNK_BYTES = 1024 * 1024
MAX_FOLDER_UPLOAD_BYTES = 2 * 1024**3
"""The most a folder may hold to travel as one package (it is zipped in memory; the server's
default ``max_upload_bytes`` is the same)."""
_YAML_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class Upload:
    """A package the client streams to the server."""

    filename: str
    data: bytes | None = None
    path: Path | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.data is not None else self.path.stat().st_size  # type: ignore[union-attr]

    def chunks(self) -> Iterator[bytes]:
        if self.data is not None:
            view = memoryview(self.data)
            for start in range(0, len(view), _CHUNK_BYTES):
                yield bytes(view[start : start + _CHUNK_BYTES])
            return
        assert self.path is not None
        with self.path.open("rb") as f:
            while chunk := f.read(_CHUNK_BYTES):
                yield chunk


def interpret_source(
    source: SourceLike, *, upload: bool | None, server_is_local: bool
) -> ModelSourceSpec | Upload:
    """Decide how the server gets the package.

    URLs and bioimage.io ids are fetched by the server. A local path is read by the server when it
    runs on this host (``upload`` unset) and uploaded otherwise; bytes are always uploaded.
    """
    if isinstance(source, bytes):
        return Upload("package.zip" if source[:2] == b"PK" else "bioimageio.yaml", data=source)
    text = os.fspath(source)
    if re.match(r"^https?://", text):
        return ModelSourceSpec(kind="url", value=text)
    path = Path(text).expanduser()
    if path.exists():
        if upload is None:
            upload = not server_is_local
        if not upload:
            return ModelSourceSpec(kind="path", value=str(path.resolve()))
        return _upload_for(path, compress=not server_is_local)
    if _BIOIMAGEIO_ID.match(text) and "." not in text.split("/")[0]:
        return ModelSourceSpec(kind="bioimageio_id", value=text)
    if "/" in text or text.endswith((".zip", ".yaml", ".yml")):
        raise SourceNotFoundError(f"no such file or folder: {text}", details={"source": text})
    raise InvalidSourceError(
        f"cannot tell what {text!r} is: give a path, an http(s) URL or a bioimage.io id",
        details={"source": text},
    )


def _upload_for(path: Path, *, compress: bool = True) -> Upload:
    if path.is_file() and path.suffix.lower() in _YAML_SUFFIXES:
        # A description names files beside it: its folder travels with it (the server keeps
        # only the files the description names), the description as bioimageio.yaml.
        return _zipped(path.parent, compress, description=path)
    if path.is_file():
        return Upload(path.name, path=path)
    return _zipped(path, compress)


def _zipped(folder: Path, compress: bool, *, description: Path | None = None) -> Upload:
    """A folder as a zip built in memory: packages are small next to the tensors. To a server
    on this host it is stored uncompressed: deflating would take longer than sending. With
    ``description``, that file is the zip's ``bioimageio.yaml`` and the folder's other
    descriptions stay home."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if description is not None:
        files = [f for f in files if f == description or not _is_description(f, folder)]
    total = sum(f.stat().st_size for f in files)
    if total > MAX_FOLDER_UPLOAD_BYTES:
        raise InvalidSourceError(
            f"{folder} holds {total / 1024**3:.1f} GiB, too much to upload as one package: "
            "give a folder (or a .zip) holding only the model's files",
            details={"source": str(folder)},
        )
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method, compresslevel=1 if compress else None) as zf:
        for file in files:
            name = "bioimageio.yaml" if file == description else file.relative_to(folder).as_posix()
            zf.write(file, name)
    return Upload(f"{folder.name}.zip", data=buffer.getvalue())


def _is_description(file: Path, folder: Path) -> bool:
    name = file.relative_to(folder).as_posix()
    return name in ("bioimageio.yaml", "rdf.yaml") or name.endswith(".bioimageio.yaml")


def is_local_address(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in {"localhost", "127.0.0.1", "::1", "0.0.0.0", ""} or address.startswith("unix:")
