"""Server settings: one object per process, read from ``MODELRUNNER_*`` environment variables
(and a ``.env`` file), overridden by CLI flags, passed in explicitly. Nothing here is read at
import time of any other module.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from modelrunner.units import GiB, MiB


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "modelrunner"


def default_receiving_bytes() -> int:
    """Half of this machine's memory (16 GiB where the system does not say)."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return 16 * GiB
    return max(total // 2, 256 * MiB) if total > 0 else 16 * GiB


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
    max_upload_bytes: int = Field(2 * GiB, gt=0)
    """Largest package a client may upload."""
    max_download_bytes: int = Field(8 * GiB, gt=0)
    """Largest file the server downloads for a model."""
    max_unpacked_bytes: int = Field(8 * GiB, gt=0)
    """Largest total size a zip package may unpack to (zip bomb guard)."""
    max_package_files: int = Field(10_000, gt=0)
    """Most files a zip package may hold."""
    upload_ttl_s: float = Field(600.0, gt=0)
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
    """How often a runtime repeats its registration. One silent for three intervals is dropped
    (and the server is no longer ready when it was the last)."""
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
    max_exchanges_per_token: int = Field(32, gt=0)
    """Flight exchanges (predictions, frame streams, sessions) one token may have open at once
    on a runtime, with authentication on; one more is refused with RESOURCE_EXHAUSTED. The
    threads that exchanges hold while their clients are slow to send are bounded by this (a
    Flight server cannot end a call whose client sends nothing); the memory, by
    ``max_receiving_bytes``."""
    max_sample_bytes: int = Field(16 * GiB, gt=0)
    """Largest sample (all input tensors of one prediction or frame, as announced by the
    client's Arrow schema) the runtime accepts; larger ones are refused with INVALID_ARGUMENT
    before anything is allocated."""
    max_receiving_bytes: int = Field(default_factory=default_receiving_bytes, gt=0)
    """Bytes of samples a runtime receives at once, all clients together, with or without
    authentication: each exchange reserves the sample its schema announces when it opens (a
    session: while a sample arrives or is predicted) until it is answered; one more is refused
    with RESOURCE_EXHAUSTED. Default: half of the machine's memory. This bounds what exchanges
    that announce large samples and then send nothing can make the runtime hold."""

    # -- authentication and TLS (security) --
    auth: bool = False
    """Require a bearer token (``modelrunner token create``) on every call but health checks, on
    both planes. Without it the server listens on loopback only (see ``insecure``)."""
    auth_tokens_file: Path | None = None
    """The tokens the server accepts (hashed); default ``<cache_dir>/auth/tokens.json``."""
    auth_cache_s: float = Field(1.0, ge=0)
    """The bound on how long rights outlive their revocation: open sessions, frame streams and
    Open Inference streams ask again whether their caller may still use their model at most this
    often (a revoked token, a changed role, an unpublished or removed model end them at their
    next frame after it), and a runtime of its own trusts the control service's verdict on a
    token this long (there, both add up: at most twice this). 0 asks before every frame."""
    insecure: bool = False
    """Allow listening on a non-loopback interface without authentication and TLS."""
    tls_cert_file: Path | None = None
    """PEM certificate chain the control service and the runtime present (TLS on both planes)."""
    tls_key_file: Path | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_ca_file: Path | None = None
    """PEM root certificates to verify the other side's certificate: a runtime verifies the
    control service, the control service verifies runtimes. Default: the system's roots."""
    tls_client_ca_file: Path | None = None
    """Mutual TLS for runtimes: runtimes must present a client certificate signed by one of these
    roots to register (users' clients need none)."""
    tls_client_cert_file: Path | None = None
    """``modelrunner runtime``: the client certificate it presents to the control service."""
    tls_client_key_file: Path | None = None
    """``modelrunner runtime``: the private key of ``tls_client_cert_file``."""
    runtime_token: SecretStr | None = None
    """``modelrunner runtime``: the token (role ``runtime``) it registers with and checks its
    callers' tokens with; ``MODELRUNNER_RUNTIME_TOKEN``."""
    ray_auth_token_file: Path | None = None
    """``modelrunner serve --ray``: the file holding the Ray cluster's token when it runs with
    Ray's token authentication (docs/cluster.md); default: Ray's own ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``. Only this process reads it, not the runtime
    actors."""

    # -- package contents and outbound fetches (security) --
    path_source_roots: list[Path] = Field(default_factory=list)
    """Folders on the server under which clients may name ``path`` sources (the server reads
    the package from its own disk). Empty, the default: the server reads no client-named paths
    and clients upload local packages instead (``modelrunner.client`` does so by itself). The
    cache directory is never readable this way. Environment: a JSON list,
    ``MODELRUNNER_PATH_SOURCE_ROOTS='["/data/models"]'``."""
    fetch_allowed_networks: list[str] = Field(default_factory=list)
    """Networks (CIDRs such as ``10.1.0.0/16`` or ``127.0.0.1/32``) the server may download
    from besides public addresses. Without them, URL sources, bioimage.io ids, the files a
    remote description names and validation with io checks never reach loopback, private,
    link-local, multicast, unspecified or other non-public addresses."""
    fetch_max_redirects: int = Field(5, ge=0)
    """Most HTTP redirects one download follows; every one is checked like the first URL."""

    @field_validator("fetch_allowed_networks", mode="after")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for network in value:
            ipaddress.ip_network(network.strip(), strict=False)  # ValueError names the bad one
        return [network.strip() for network in value]

    # -- resource limits (security) --
    max_description_bytes: int = Field(256 * 1024, gt=0)
    """Largest description file (YAML) the server parses; bioimageio.spec's pure-Python YAML
    parser takes seconds per MiB (zoo descriptions take 3-20 KB)."""
    max_description_nodes: int = Field(50_000, gt=0)
    """Most YAML nodes a description may hold, counting each alias as the nodes it repeats
    (a "billion laughs" alias bomb is refused before it is expanded)."""
    validation_timeout_s: float = Field(120.0, gt=0)
    """Longest a description worker may take to read or validate one description (with
    ``perform_io_checks`` this includes downloading and hashing its files)."""
    validation_memory_bytes: int = Field(2 * GiB, gt=0)
    """Memory a description worker may allocate beyond its size after start-up (its address
    space limit, ``RLIMIT_AS``)."""
    description_workers: int = Field(2, ge=0)
    """Description worker processes kept started and idle, so validating and adding do not
    wait for a process to start; more are started (and stopped again) as calls need them."""
    max_concurrent_validations: int = Field(4, gt=0)
    """ValidateModel calls served at once; more are refused with RESOURCE_EXHAUSTED."""
    max_concurrent_adds: int = Field(4, gt=0)
    """AddModel calls served at once; more are refused with RESOURCE_EXHAUSTED."""
    max_concurrent_tests: int = Field(4, gt=0)
    """TestModel calls served at once (each waits for a runtime to load and run the model)."""
    max_concurrent_package_fetches: int = Field(4, gt=0)
    """FetchModelPackage streams served at once (runtimes on other hosts fetching packages)."""
    max_concurrent_infers: int = Field(16, gt=0)
    """Open Inference Protocol (V2) ModelInfer calls served at once; each holds a thread of the
    control service while its runtime computes. More are refused with RESOURCE_EXHAUSTED."""
    max_concurrent_infer_streams: int = Field(8, gt=0)
    """V2 ModelStreamInfer streams open at once (each holds a thread for as long as it is
    open)."""
    max_concurrent_infer_streams_per_client: int = Field(4, gt=0)
    """V2 ModelStreamInfer streams one client (its token, else its host) may have open at
    once."""
    infer_stream_idle_timeout_s: float = Field(120.0, gt=0)
    """A V2 stream whose client sends no request for this long is ended (DEADLINE_EXCEEDED),
    so idle streams cannot hold every stream slot."""
    max_concurrent_uploads: int = Field(8, gt=0)
    """UploadPackage streams open at once, from all clients together."""
    max_concurrent_uploads_per_client: int = Field(4, gt=0)
    """UploadPackage streams one client (its token, else its host) may have open at once."""
    max_pending_uploads_per_client: int = Field(16, gt=0)
    """Uploads of one client (its token, else its host) kept or being received, not yet added
    or expired."""
    upload_idle_timeout_s: float = Field(30.0, gt=0)
    """An upload stream that sends nothing for this long is aborted (DEADLINE_EXCEEDED) and
    its partial file removed."""
    max_compression_ratio: float = Field(200.0, gt=1)
    """Largest ratio of unpacked to compressed size of a zip entry, and of a whole zip package
    (zip bomb guard); checked for entries and packages over ``compression_ratio_min_bytes``."""
    compression_ratio_min_bytes: int = Field(64 * MiB, ge=0)
    """Entries and packages unpacking to less than this are not held to
    ``max_compression_ratio`` (a small all-zero test tensor compresses 1000:1)."""

    grace_period_s: float = Field(10.0, ge=0)
    """How long a shutdown (SIGTERM, Ctrl+C) lets calls in flight finish: new calls are refused
    at once, open frame streams answer the frames already received and end with
    ServerShuttingDownError, single predictions run to their end; whatever still runs after this
    long is cut off and the process exits. Keep it under the orchestrator's kill timeout
    (Kubernetes' ``terminationGracePeriodSeconds``, 30 s by default)."""
    runtime_wait_s: float = Field(5.0, ge=0)
    """How long a call that needs a runtime (route, test, V2 inference) waits for one to
    register when none is available, as while ``modelrunner serve`` starts its embedded runtime
    or a runtime restarts; after that it fails with UNAVAILABLE."""
    log_level: str = "INFO"

    # -- metrics and placement across runtimes (docs/metrics.md, docs/cluster.md) --------------
    metrics_port: int | None = Field(None, ge=0, le=65535)
    """Publish Prometheus metrics on ``http://metrics_host:metrics_port/metrics`` (0: a free
    port, which the runtime reports in its registration); None: no metrics endpoint."""
    metrics_host: str = "127.0.0.1"
    """Interface of the metrics endpoint. It has no authentication: bind it beyond loopback only
    on a network that only Prometheus reaches."""
    spread_queue_depth: int = Field(4, ge=1)
    """When every runtime that has a model warm reports at least this many predictions in
    progress, the model's next client is routed to an idle runtime, which loads it: traffic
    spreads over a copy more."""
    idle_unload_s: float | None = Field(None, gt=0)
    """A runtime unloads a warm model nobody used for this long (None: only when it needs the
    memory). ``modelrunner serve --ray`` defaults it to 600 s, so spread copies go away."""

    @field_validator("cache_dir", mode="after")
    @classmethod
    def _expand_user(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def effective_flight_host(self) -> str:
        return self.flight_host or self.host

    @property
    def effective_tokens_file(self) -> Path:
        return self.auth_tokens_file or self.cache_dir / "auth" / "tokens.json"

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None
