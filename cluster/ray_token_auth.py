"""Ray's token authentication for ``modelrunner serve --ray`` (docs/cluster.md, "Ray's token
authentication").

A Ray cluster started with ``RAY_AUTH_MODE=token`` (Ray's default for the clusters ``ray.init()``
starts since 2.59) takes calls to its GCS, raylets and workers only with its one shared token,
and a process must run in the cluster's own mode: a driver without the token is refused, and
``ray.init`` retries for 20 s, a log line a second, before it reports a failed connection; a
driver in token mode on a cluster without it loses its actors (the workers' calls back to it
carry no token). So before ``ray.init`` this module asks the cluster once (``GetClusterId`` on
its GCS, ``ClusterInfo`` on a Ray Client server: milliseconds) without a token and, where that
is refused, with the token Ray would send; then it puts this process in the cluster's mode, or
raises UnauthenticatedError naming where the token came from and how to pass the right one.

The token comes from, in this order: the file ``--ray-auth-token-file`` or
``MODELRUNNER_RAY_AUTH_TOKEN_FILE`` names, then Ray's own sources in Ray's order:
``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH``, ``~/.ray/auth_token``. The runtime actors need
nothing: their worker processes belong to the nodes, which hold the cluster's token.

``--ray local`` makes a token of its own in a private temporary file, removed on exit, so it
never writes ``~/.ray/auth_token``: the next ``ray start --head`` on the machine would take
that file up and demand a token nobody else has.
"""

from __future__ import annotations

import importlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import grpc

from modelrunner import errors

logger = logging.getLogger(__name__)

MODE = "RAY_AUTH_MODE"
TOKEN = "RAY_AUTH_TOKEN"
TOKEN_PATH = "RAY_AUTH_TOKEN_PATH"
DEFAULT_TOKEN_FILE = Path(".ray") / "auth_token"
"""Ray's default token file, under the home directory."""
_PROBE_TIMEOUT_S = 5.0

HOW_TO_PASS = (
    "pass the cluster's token with --ray-auth-token-file FILE (or "
    "MODELRUNNER_RAY_AUTH_TOKEN_FILE; Ray's RAY_AUTH_TOKEN_PATH and RAY_AUTH_TOKEN work too); "
    "`ray get-auth-token` on the head node prints it"
)
_STALE_DEFAULT = (
    " (Ray writes that file when `ray.init()` starts a cluster or `ray get-auth-token "
    "--generate` runs; one left by another cluster is stale)"
)


@dataclass(frozen=True)
class TokenSource:
    """Where this process's Ray token comes from."""

    name: str
    """As the user knows it: :data:`NAMED_FILE`, ``RAY_AUTH_TOKEN``, ..."""
    path: Path | None = None
    """The file holding the token; None: the ``RAY_AUTH_TOKEN`` variable."""
    named: bool = False
    """Named to modelrunner (or made by it), which points Ray's ``RAY_AUTH_TOKEN_PATH`` at it."""

    def describe(self) -> str:
        return f"{self.name} ({self.path})" if self.path is not None else self.name

    def read(self, environ: Mapping[str, str]) -> str:
        """The token, as Ray reads it (surrounding white space dropped)."""
        if self.path is None:
            return environ.get(TOKEN, "").strip()
        try:
            token = self.path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise errors.InvalidArgumentError(
                f"cannot read Ray's token from {self.describe()}: {errors.clip(e)}"
            ) from None
        if not token:
            # Ray aborts the process on an empty token file: say so first
            raise errors.InvalidArgumentError(f"Ray's token file {self.describe()} is empty")
        if self.named and self.path.stat().st_mode & 0o077:
            logger.warning(
                "Ray's token file %s can be read by other users: anyone who reads it can run "
                "code on the cluster (chmod 600 it)",
                self.path,
            )
        return token


NAMED_FILE = "--ray-auth-token-file/MODELRUNNER_RAY_AUTH_TOKEN_FILE"


def find_token_source(
    token_file: Path | None = None, environ: Mapping[str, str] = os.environ
) -> TokenSource | None:
    """The source Ray's token comes from: ``token_file`` when given, else Ray's own order."""
    if token_file is not None:
        return TokenSource(NAMED_FILE, token_file.expanduser().absolute(), named=True)
    if environ.get(TOKEN):
        return TokenSource(TOKEN)
    if environ.get(TOKEN_PATH):
        return TokenSource(TOKEN_PATH, Path(environ[TOKEN_PATH]))  # as Ray opens it
    home = environ.get("HOME")
    default = (Path(home) if home else Path.home()) / DEFAULT_TOKEN_FILE
    if default.is_file():
        return TokenSource("~/.ray/auth_token", default)
    return None


@dataclass(frozen=True)
class RayAuthChoice:
    """The mode this process joins a cluster in, and the token's source in token mode."""

    mode: Literal["token", "disabled"]
    source: TokenSource | None = None

    def environment(self) -> dict[str, str | None]:
        """Ray's variables for it (None: unset)."""
        env: dict[str, str | None] = {MODE: self.mode}
        if self.mode == "token" and self.source is not None and self.source.named:
            assert self.source.path is not None
            env[TOKEN_PATH] = str(self.source.path)
            env[TOKEN] = None  # Ray would prefer it to the file
        return env


def use_ray_auth(choice: RayAuthChoice, environ: MutableMapping[str, str] = os.environ) -> None:
    """Put this process (and the Ray processes it starts) in ``choice``'s mode."""
    for name, value in choice.environment().items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    reread_ray_auth()


def reread_ray_auth() -> None:
    """Ray reads ``RAY_AUTH_MODE`` into its config once and caches the token: read both again
    (the config first, as Ray's own tests do, so no thread reloads a token it no longer has)."""
    raylet = _untyped("ray._raylet")
    raylet.Config.initialize("")
    raylet.AuthenticationTokenLoader.instance().reset_cache()


def _untyped(module: str) -> Any:
    """One of Ray's compiled or generated modules, which carry no types for what we use."""
    return importlib.import_module(module)


@dataclass(frozen=True)
class _Probe:
    """One call that every Ray cluster answers, and refuses without its token in token mode."""

    address: str
    """``host:port``."""
    ray_client: bool
    """A Ray Client server (``ray://``) rather than the GCS."""

    def ask(self, token: str | None, timeout: float) -> grpc.StatusCode:
        metadata = (("authorization", f"Bearer {token}"),) if token else ()
        channel = _channel(self.address)
        try:
            if self.ray_client:
                client = _untyped("ray.core.generated.ray_client_pb2")
                _untyped("ray.core.generated.ray_client_pb2_grpc").RayletDriverStub(
                    channel
                ).ClusterInfo(
                    client.ClusterInfoRequest(type=client.ClusterInfoType.PING),
                    metadata=metadata,
                    timeout=timeout,
                )
            else:
                gcs = _untyped("ray.core.generated.gcs_service_pb2")
                _untyped("ray.core.generated.gcs_service_pb2_grpc").NodeInfoGcsServiceStub(
                    channel
                ).GetClusterId(gcs.GetClusterIdRequest(), metadata=metadata, timeout=timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None  # a grpc.Call too
            return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
        finally:
            channel.close()
        return grpc.StatusCode.OK


def _channel(address: str) -> grpc.Channel:
    """A channel as Ray's own clients open it: with Ray's TLS where ``RAY_USE_TLS`` says so."""
    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        from ray._common.tls_utils import load_certs_from_env

        cert, key, ca = load_certs_from_env()
        credentials = grpc.ssl_channel_credentials(
            certificate_chain=cert, private_key=key, root_certificates=ca
        )
        return grpc.secure_channel(address, credentials)
    return grpc.insecure_channel(address)


def _probe_for(address: str) -> _Probe | None:
    """What to ask for ``address`` as ``ray.init`` resolves it; None: nothing to ask."""
    if address.startswith("ray://"):
        return _Probe(address.removeprefix("ray://"), ray_client=True)
    from ray._private.services import canonicalize_bootstrap_address

    try:
        # auto: RAY_ADDRESS or the cluster `ray start` last started on this node
        gcs = canonicalize_bootstrap_address(address)
    except (ConnectionError, ValueError):
        return None  # ray.init says what is wrong with it
    return _Probe(gcs, ray_client=False) if gcs else None


def choose_ray_auth(
    address: str,
    token_file: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    timeout: float = _PROBE_TIMEOUT_S,
) -> RayAuthChoice | None:
    """The mode to join the cluster at ``address`` in, after asking it; None when it gave no
    answer about tokens (Ray's own rules apply). UnauthenticatedError when it wants a token and
    refuses this process's (or there is none)."""
    probe = _probe_for(address)
    if probe is None:
        return None
    source = find_token_source(token_file, environ)
    mode = environ.get(MODE, "").lower()
    answer = probe.ask(None, timeout)
    if answer == grpc.StatusCode.OK:
        if source is not None and (source.named or mode == "token"):
            logger.warning(
                "the Ray cluster at %r does not use Ray's token authentication: joining it "
                "without the token from %s",
                address,
                source.describe(),
            )
        return RayAuthChoice("disabled")
    if answer != grpc.StatusCode.UNAUTHENTICATED:
        return None  # not a Ray cluster, or one that cannot answer now: ray.init says which
    where = f"{address!r} ({probe.address})" if address == "auto" else repr(address)
    wants = f"the Ray cluster at {where} uses Ray's token authentication"
    if source is None:
        raise errors.UnauthenticatedError(
            f"{wants}, and this process has no token (none in {NAMED_FILE}, {TOKEN}, "
            f"{TOKEN_PATH} or ~/.ray/auth_token): {HOW_TO_PASS}"
        )
    if mode == "disabled" and not source.named:
        raise errors.UnauthenticatedError(
            f"{wants}, and {MODE}=disabled here: unset it, and {HOW_TO_PASS}"
        )
    if probe.ask(source.read(environ), timeout) == grpc.StatusCode.UNAUTHENTICATED:
        stale = _STALE_DEFAULT if source.name == "~/.ray/auth_token" else ""
        raise errors.UnauthenticatedError(
            f"{wants} and refused the token from {source.describe()}{stale}: {HOW_TO_PASS}"
        )
    return RayAuthChoice("token", source)


@contextmanager
def local_cluster_token(
    token_file: Path | None = None, environ: MutableMapping[str, str] = os.environ
) -> Iterator[Path | None]:
    """Ray's mode and token for a cluster this process starts (``--ray local``), Ray's
    variables as they were again afterwards (stop the cluster first). Yields the token file it
    made (removed on exit); None when the token is the user's (``token_file``, ``RAY_AUTH_TOKEN``,
    ``RAY_AUTH_TOKEN_PATH``) or ``RAY_AUTH_MODE=disabled`` turns token mode off."""
    before = {name: environ.get(name) for name in (MODE, TOKEN, TOKEN_PATH)}
    made: Path | None = None
    mode = environ.get(MODE, "token").lower()
    try:
        if token_file is not None or (
            mode == "token" and (environ.get(TOKEN) or environ.get(TOKEN_PATH))
        ):
            source = find_token_source(token_file, environ)
            assert source is not None
            source.read(environ)  # a missing or empty file: a clear error, not Ray aborting
            use_ray_auth(RayAuthChoice("token", source), environ)
        elif mode == "token":
            made = Path(tempfile.mkdtemp(prefix="modelrunner-ray-")) / "auth_token"
            descriptor = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(descriptor, "w") as f:
                f.write(secrets.token_hex(32))  # 256 bits, as Ray's own tokens
            use_ray_auth(RayAuthChoice("token", TokenSource("own", made, named=True)), environ)
        yield made
    finally:
        for name, value in before.items():
            if value is None:
                environ.pop(name, None)
            else:
                environ[name] = value
        reread_ray_auth()  # before the file goes: nothing reloads the token from it then
        if made is not None:
            shutil.rmtree(made.parent, ignore_errors=True)
