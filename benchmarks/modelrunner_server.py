"""A ``modelrunner serve`` process for the benchmark, and the client that talks to it."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from modelrunner.client import ModelRunnerClient

from .processes import ServerProcess, free_port

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
IDENTITY_MIN_SIZE = 64
IDENTITY_STEP = 64
"""The identity model takes y/x sizes 64 + n*64: every benchmark size is one, and a tiled
prediction's ``blocksize`` n gives tiles of 64 + 64*n pixels."""


def identity_blocksize(tile: int) -> int:
    """bioimageio.core's blocksize parameter that gives ``tile`` pixel tiles on the identity."""
    return max(0, (tile - IDENTITY_MIN_SIZE) // IDENTITY_STEP)


@dataclass
class ModelRunner:
    """A running server: its process (for memory samples), address and a connected client."""

    server: ServerProcess
    address: str
    client: ModelRunnerClient
    workdir: Path
    _models: dict[str, str] = field(default_factory=dict)

    def identity_model(self) -> str:
        """Build the ONNX identity package once (``tests.tiny_models``), add and warm it."""
        if "identity" not in self._models:
            build = _identity_builder()
            package = build(
                self.workdir / "identity-model", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
            )
            self._models["identity"] = self.add_and_load(package, "onnx")
        return self._models["identity"]

    def add_and_load(self, source: Path, weight_format: str) -> str:
        info = self.client.add_model(source)
        self.client.load(info.id, weight_format=weight_format)
        logger.info("model %s (%s) added and loaded", info.id, source)
        return str(info.id)


def _identity_builder() -> Callable[..., Path]:
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.tiny_models import build_onnx_identity
    except ImportError as e:
        raise RuntimeError(
            f"the identity model builder tests.tiny_models.build_onnx_identity is missing: {e}"
        ) from e
    return build_onnx_identity


def _security(workdir: Path, cache: Path, *, tls: bool) -> tuple[list[str], str, Path | None]:
    """Flags for ``--auth`` (and, with ``tls``, TLS on both planes), a token, and the CA: a write
    token in the server's token file and the test suite's certificates
    (``tests.certificates``)."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    from modelrunner.auth import Role
    from modelrunner.entry_server.token_store import TokenStore

    token, _ = TokenStore(cache / "auth" / "tokens.json").create("bench", Role.WRITE, "bench")
    if not tls:
        return ["--auth"], token, None
    from tests.certificates import make_certificates

    certs = make_certificates(workdir)
    flags = ["--auth", "--tls-cert", str(certs.server_cert), "--tls-key", str(certs.server_key)]
    return [*flags, "--tls-ca", str(certs.ca)], token, certs.ca


def start_modelrunner(
    stack: ExitStack,
    workdir: Path,
    log_dir: Path,
    *,
    name: str = "modelrunner",
    timeout: float = 120,
    device: str = "cpu",
    security: str = "",
) -> ModelRunner:
    """Start ``modelrunner serve`` on free ports with its own cache; stopped by ``stack``.
    ``security``: "auth" for ``--auth`` (a client with a token), "tls" for ``--auth`` and TLS on
    both planes, "" for neither."""
    port, flight_port = free_port(), free_port()
    cache = workdir / f"{name}-cache"
    flags: list[str] = []
    token: str | None = None
    ca: Path | None = None
    if security:
        flags, token, ca = _security(workdir / f"{name}-tls", cache, tls=security == "tls")
    command = [
        sys.executable,
        "-m",
        "modelrunner.app.cli",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--flight-port",
        str(flight_port),
        "--cache-dir",
        str(cache),
        "--device",
        device,
        "--log-level",
        "WARNING",
        *flags,
    ]
    server = stack.enter_context(ServerProcess(name, command, log_dir / f"{name}.log"))
    address = f"127.0.0.1:{port}"
    client = stack.enter_context(
        ModelRunnerClient(address, timeout=600, token=token, tls=ca or False)
    )
    server.wait_ready(lambda: client.list_models(timeout=2) is not None, timeout=timeout)
    return ModelRunner(server, address, client, workdir)
