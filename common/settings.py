"""Server settings: one object per process, read from ``MODELRUNNER_*`` environment variables
(and a ``.env`` file), overridden by CLI flags, passed in explicitly. Nothing here is read at
import time of any other module.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GiB = 1024**3
MiB = 1024**2


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "modelrunner"


class Settings(BaseSettings):
    """Settings of ``modelrunner serve`` and ``modelrunner runtime``."""

    model_config = SettingsConfigDict(
        env_prefix="MODELRUNNER_", env_file=".env", extra="ignore", validate_assignment=True
    )

    host: str = "127.0.0.1"
    """Interface the control service (gRPC) listens on; ``0.0.0.0`` for every interface."""
    port: int = Field(50051, ge=0, le=65535)
    """Control service port; 0 picks a free one."""
    flight_host: str | None = None
    """Interface the runtime (Arrow Flight) listens on; defaults to ``host``."""
    flight_port: int = Field(8815, ge=0, le=65535)
    """Runtime port; 0 picks a free one."""
    advertise_host: str | None = None
    """Host name the runtime gives clients; defaults to the listening host (a wildcard host is
    replaced by the host the client used to reach the control service)."""

    cache_dir: Path = Field(default_factory=default_cache_dir)
    """Content-addressed model cache and its index."""
    cache_budget_bytes: int = Field(20 * GiB, gt=0)
    """Size the cache may take; least recently used models not in use are evicted beyond it."""
    max_upload_bytes: int = Field(4 * GiB, gt=0)
    """Largest package a client may upload."""
    max_download_bytes: int = Field(8 * GiB, gt=0)
    """Largest file the server downloads for a model."""
    max_unpacked_bytes: int = Field(16 * GiB, gt=0)
    """Largest total size a zip package may unpack to (zip bomb guard)."""
    max_package_files: int = Field(10_000, gt=0)
    """Most files a zip package may hold."""
    upload_ttl_s: float = Field(3600.0, gt=0)
    """Uploads not added or validated within this time are deleted."""

    download_timeout_s: float = Field(60.0, gt=0)
    """Timeout for connecting and for each read of an HTTP download."""
    download_retries: int = Field(3, ge=0)
    """Retries of a failed HTTP download (connection errors and 5xx answers)."""
    download_backoff_s: float = Field(0.5, ge=0)
    """Wait before the first retry of a download; each further retry waits twice as long."""
    bioimageio_base_url: str = "https://hypha.aicell.io/bioimage-io/artifacts"
    """A bioimage.io id ``X`` resolves to ``{bioimageio_base_url}/X/files/rdf.yaml``."""

    control_address: str | None = None
    """``modelrunner runtime``: the control service to register with, e.g. ``host:50051``."""
    runtime_id: str | None = None
    """Name of this runtime; defaults to ``<hostname>:<flight port>``."""
    device: str | None = None
    """Default device: ``cuda`` when available, else ``cpu``."""
    fast_path: bool = True
    """Serve models through the fast path (processing fused with the network on the device)
    where it matches bioimageio.core on the package's test inputs; False: always
    bioimageio.core's pipeline."""
    runtime_memory_budget_bytes: int = Field(16 * GiB, gt=0)
    """Memory the runtime's warm pipelines may take; least recently used ones are unloaded."""
    heartbeat_interval_s: float = Field(10.0, gt=0)
    """How often a runtime repeats its registration."""
    runtime_call_timeout_s: float = Field(900.0, gt=0)
    """Longest the control service waits for a runtime to answer a forwarded call (a model test
    loads the model and runs it, which can take minutes for large models)."""
    max_tile_input_bytes: int = Field(256 * MiB, gt=0)
    """Inputs larger than this are predicted tile by tile when no blocksize is given."""
    stream_tiles_min_bytes: int = Field(64 * MiB, ge=0)
    """Tiled predictions whose inputs take at least this many bytes send their outputs back band
    by band as the tiles finish, so the runtime never holds a whole output (and computes sample
    mean/std in bounded chunks): its memory stays near the input's size. Smaller ones are
    assembled whole first. Models whose outputs cannot be cut into bands of rows (see
    ``runtime_flight/streamed_tiling.py``) are always assembled whole."""

    grace_period_s: float = Field(5.0, ge=0)
    """How long shutdown waits for calls in flight."""
    log_level: str = "INFO"

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def effective_flight_host(self) -> str:
        return self.flight_host or self.host
