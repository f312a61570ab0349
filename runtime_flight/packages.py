"""Where a runtime finds a model's package.

On the control service's host the runtime reads the shared cache directly
(``<cache>/models/<id>/``). Elsewhere it fetches the package once from the control service
(``FetchModelPackage``), checks its sha256, unpacks it safely into its own cache and keeps it.
Model ids given as a prefix or a bioimage.io id are resolved by the control service.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import grpc

from modelrunner import cache_layout, errors
from modelrunner.transport_errors import from_rpc_error
from modelrunner.v1 import control_pb2, control_pb2_grpc

logger = logging.getLogger(__name__)

_FULL_ID = re.compile(r"^[0-9a-f]{64}$")
_REMEMBERED_REMOVALS = 4096


class PackageLocator:
    """Maps model ids to unpacked package folders on this host."""

    def __init__(
        self,
        *,
        local_cache_dir: Path,
        shared_cache_dir: Path | None = None,
        control_channel: Callable[[], grpc.Channel | None] = lambda: None,
        max_unpacked_bytes: int,
        max_files: int,
    ) -> None:
        self.local_cache_dir = local_cache_dir
        self.shared_cache_dir = shared_cache_dir
        self._control_channel = control_channel
        self._max_unpacked_bytes = max_unpacked_bytes
        self._max_files = max_files
        self._fetch_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._removed: OrderedDict[str, None] = OrderedDict()
        """Models removed since: their package on disk proves nothing any more (the control
        service's folder may still be there for a moment), the control service decides."""

    def resolve(self, model_id: str) -> str:
        """The full id for a full id, a unique prefix or a bioimage.io id."""
        if (
            _FULL_ID.match(model_id)
            and model_id not in self._removed
            and self._existing(model_id) is not None
        ):
            return model_id
        channel = self._control_channel()
        if channel is None:
            if _FULL_ID.match(model_id):
                return model_id
            raise errors.ModelNotFoundError(
                f"model {model_id!r} is not on this runtime and no control service is connected"
            )
        stub = control_pb2_grpc.ControlServiceStub(channel)
        try:
            response = stub.GetModelRoute(
                control_pb2.GetModelRouteRequest(model_id=model_id), timeout=30
            )
        except grpc.RpcError as e:
            raise from_rpc_error(e) from None
        with self._lock:
            self._removed.pop(response.model_id, None)  # added again since
        return response.model_id

    def forget(self, model_id: str, delete_copy: bool = True) -> None:
        """The control service removed the model: its id is asked about from now on, and
        (``delete_copy``) this runtime's own copy of its package goes (never the control
        service's shared cache). A removal first only marks the id, and deletes the copy once
        the work still reading it (predictions, loads) has ended."""
        with self._lock:
            self._removed[model_id] = None
            while len(self._removed) > _REMEMBERED_REMOVALS:
                self._removed.popitem(last=False)
        if delete_copy and _FULL_ID.match(model_id):
            folder = cache_layout.model_dir(self.local_cache_dir, model_id)
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)
                logger.info("deleted this runtime's copy of removed model %s", model_id[:12])

    def package_dir(self, model_id: str) -> Path:
        """The unpacked package of ``model_id`` (a full id), fetched first when needed."""
        found = self._existing(model_id)
        if found is not None:
            return found
        with self._lock:
            lock = self._fetch_locks.setdefault(model_id, threading.Lock())
        with lock:  # one fetch per model, however many requests ask at once
            found = self._existing(model_id)
            if found is not None:
                return found
            return self._fetch(model_id)

    def _existing(self, model_id: str) -> Path | None:
        for cache in (self.shared_cache_dir, self.local_cache_dir):
            if cache is None:
                continue
            folder = cache_layout.model_dir(cache, model_id)
            if cache_layout.find_rdf(folder) is not None:
                return folder
        return None

    def _fetch(self, model_id: str) -> Path:
        channel = self._control_channel()
        if channel is None:
            raise errors.ModelNotFoundError(
                f"model {model_id!r} is not in this runtime's cache and no control service is "
                "connected to fetch it from"
            )
        from modelrunner.safe_zip import unpack_zip

        staging_root = cache_layout.staging_dir(self.local_cache_dir)
        staging_root.mkdir(parents=True, exist_ok=True)
        stub = control_pb2_grpc.ControlServiceStub(channel)
        with tempfile.TemporaryDirectory(dir=staging_root, prefix="fetch-") as tmp:
            archive = Path(tmp) / "package.zip"
            digest = hashlib.sha256()
            expected_sha, expected_size, size = "", 0, 0
            try:
                with archive.open("wb") as f:
                    for part in stub.FetchModelPackage(
                        control_pb2.FetchModelPackageRequest(model_id=model_id), timeout=3600
                    ):
                        if part.sha256:
                            expected_sha, expected_size = part.sha256, part.size_bytes
                        if part.chunk:
                            f.write(part.chunk)
                            digest.update(part.chunk)
                            size += len(part.chunk)
            except grpc.RpcError as e:
                raise from_rpc_error(e) from None
            if (expected_sha and digest.hexdigest() != expected_sha) or (
                expected_size and size != expected_size
            ):
                raise errors.UnavailableError(
                    f"the package of model {model_id} arrived damaged "
                    f"({size} of {expected_size} bytes, sha256 mismatch); try again"
                )
            unpacked = Path(tmp) / "package"
            unpacked.mkdir()
            unpack_zip(
                archive, unpacked, max_bytes=self._max_unpacked_bytes, max_files=self._max_files
            )
            target = cache_layout.model_dir(self.local_cache_dir, model_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(unpacked, target)
            except OSError:
                if cache_layout.find_rdf(target) is None:
                    shutil.rmtree(target, ignore_errors=True)
                    os.rename(unpacked, target)
        logger.info("fetched model %s from the control service", model_id[:12])
        return target
