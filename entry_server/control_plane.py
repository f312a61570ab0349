"""The control service's logic layer: the registry plus the runtimes, transport free.

The gRPC servicer is a thin shell around this object (proto in, a call here, proto out) and
holds nothing else; the Open Inference Protocol's plane (:mod:`.inference_plane`) asks it for
routes and models. An embedded runtime or a test may call it directly.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from modelrunner import errors, types
from modelrunner.auth import ANONYMOUS, Identity, Role
from modelrunner.call_rights import Recheck
from modelrunner.entry_server.authentication import Authenticator
from modelrunner.entry_server.call_limits import ControlCallLimits
from modelrunner.entry_server.model_access import ModelAccess
from modelrunner.entry_server.packages.uploads import StoredUpload, UploadHeader
from modelrunner.entry_server.packages.zips import PackageZip
from modelrunner.entry_server.registry import ModelRegistry
from modelrunner.entry_server.runtimes import actions as runtime_actions
from modelrunner.entry_server.runtimes.directory import RegistrationReply, RuntimeDirectory
from modelrunner.entry_server.server_info import server_info
from modelrunner.progress import ProgressCallback, no_progress
from modelrunner.runtime_client import Route
from modelrunner.settings import Settings
from modelrunner.tls import ClientTls

logger = logging.getLogger(__name__)


_REMOVAL_TIMEOUT_S = 60.0
"""How long a removal waits for a runtime to unload the model (which waits up to 30 s for the
predictions running on it), and for this service's own operations on its package."""
_REMOVAL_CALLS = 16
"""Runtimes a removal calls at once."""


@dataclass(frozen=True)
class ModelRemoval:
    model_id: str
    freed_bytes: int
    """0 when the model stays for other workspaces."""
    calls_in_flight: int
    """Predictions the runtimes were running on it, which the removal waited for."""


class ControlPlane:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        runtimes: RuntimeDirectory,
        *,
        authenticator: Authenticator | None = None,
        access: ModelAccess | None = None,
        runtime_tls: ClientTls | None = None,
    ) -> None:
        """``runtime_tls``: how to reach runtimes that speak TLS."""
        self.settings = settings
        self.registry = registry
        self.runtimes = runtimes
        self._authenticator = authenticator or Authenticator(settings)
        self.access = access or ModelAccess(settings.cache_dir / "model_access.json")
        self.limits = ControlCallLimits(settings)
        """How many long calls of each kind may run at once (a servicer holds a slot per
        call)."""
        self._runtime_tls = runtime_tls
        self.metrics_uri = ""
        """Where this process's Prometheus metrics are scraped (set by whoever publishes them)."""
        self._runtime_callers: dict[str, runtime_actions.RuntimeCaller] = {}
        self._callers_lock = threading.Lock()
        self._models_lock = threading.Lock()
        """Held for the bookkeeping of who holds which model (a grant, a removal's start and
        end), never while runtimes are called."""
        self._removals: dict[str, threading.Event] = {}
        """Packages being removed, each with the event its removal sets when it ends: an add of
        the same package waits for it, so an add and a remove of one package never
        interleave."""

    @property
    def runtime_tls(self) -> ClientTls | None:
        """How the control service reaches runtimes that speak TLS (None: plaintext)."""
        return self._runtime_tls

    # -- who sees what ---------------------------------------------------------------------------

    def visible_id(self, model_ref: str, identity: Identity = ANONYMOUS) -> str:
        """The full id of a model the caller may see; a model of another workspace is as
        unknown to it as one that does not exist (same error, same message)."""
        if identity.sees_all_workspaces():
            return self.registry.resolve(model_ref)
        return self.registry.resolve(model_ref, lambda m: self.access.visible(m, identity))

    def _with_access(self, info: types.ModelInfo, identity: Identity) -> types.ModelInfo:
        """The model's workspaces as the caller may know them: an admin all, others only
        their own (which other workspaces hold a package is theirs to know)."""
        workspaces, published = self.access.workspaces(info.id)
        if not identity.sees_all_workspaces():
            workspaces = tuple(w for w in workspaces if w == identity.workspace)
        return info.model_copy(update={"workspaces": workspaces, "published": published})

    def _loaded_as_seen(self, loaded: types.LoadedModel, identity: Identity) -> types.LoadedModel:
        """A warm pipeline as the caller may know it: how much and when it was used tells a
        workspace what another workspace does with a package they share (or a published one),
        so a non-admin sees those only for a model that is its workspace's alone."""
        if identity.sees_all_workspaces():
            return loaded
        held, published = self.access.workspaces(loaded.model_id)
        if published or any(w != identity.workspace for w in held):
            return loaded.model_copy(update={"requests": 0, "last_used_at": None})
        return loaded

    def check_caller(self, token: str, model_ref: str = "") -> tuple[Identity, str]:
        """For a runtime: who holds ``token``, and the full id of ``model_ref`` when the holder
        may use it (UnauthenticatedError, ModelNotFoundError otherwise)."""
        identity = self._authenticator.identify(token)
        return identity, self.visible_id(model_ref, identity) if model_ref else ""

    def recheck(self, token: str | None, method: str) -> Recheck | None:
        """How to ask again whether ``token`` may still call ``method`` (None when calls are
        not authenticated): a long call's rights follow the token (``CallRights``)."""
        return self._authenticator.recheck(token, method)

    def issue_runtime_token(self, name: str) -> str | None:
        """A credential for runtimes this process starts (the embedded runtime, Ray actors),
        valid while this control service runs; None when calls are not authenticated."""
        if not self._authenticator.enabled:
            return None
        return self._authenticator.issue_internal(name, Role.RUNTIME)

    def _caller_for(self, runtime_id: str) -> runtime_actions.RuntimeCaller:
        """How to call one runtime: with authentication on, a ``control`` token issued for it
        alone (which no other runtime and not the control service accept)."""
        with self._callers_lock:
            caller = self._runtime_callers.get(runtime_id)
            if caller is None:
                token = (
                    self._authenticator.issue_internal(
                        "control-service", Role.CONTROL, audience=runtime_id
                    )
                    if self._authenticator.enabled
                    else None
                )
                caller = runtime_actions.RuntimeCaller(token=token, tls=self._runtime_tls)
                self._runtime_callers[runtime_id] = caller
            return caller

    # -- models ----------------------------------------------------------------------------------

    def add_model(
        self,
        source: types.ModelSourceSpec,
        progress: ProgressCallback = no_progress,
        identity: Identity = ANONYMOUS,
    ) -> tuple[types.ModelInfo, bool]:
        """Add a model to the caller's workspace (after a removal of the same package under
        way, which it waits for)."""
        for _ in range(3):
            # an upload is kept until the model is granted: it may have to be stored again
            info, created = self.registry.add(source, progress, keep_upload=True)
            with self._models_lock:
                removal = self._removals.get(info.id)
                # a remove of the same package may have run between the store and now
                granted = removal is None and self.registry.cache.find(info.id) is not None
                if granted:
                    self.access.grant(info.id, identity.workspace)
            if granted:
                self.registry.discard_upload(source)
                return self._with_access(info, identity), created
            if removal is not None:  # then the package is stored again
                removal.wait(2 * _REMOVAL_TIMEOUT_S)
        raise errors.UnavailableError(
            "the package was removed while it was being added, three times; try again",
            details={"model_id": info.id},
        )

    def receive_upload(
        self, header: UploadHeader, chunks: Iterable[bytes], *, client: str = ""
    ) -> StoredUpload:
        """Store an upload of ``client`` (whose pending uploads are counted) for a later add
        that names its ``upload_id``."""
        return self.registry.receive_upload(header, chunks, client=client)

    def validate(
        self, source: types.ModelSourceSpec, *, perform_io_checks: bool = False
    ) -> types.ValidationReport:
        """Validate a description without adding it; an invalid one gives a failed report."""
        return self.registry.validate(source, perform_io_checks=perform_io_checks)

    @contextmanager
    def package_zip(self, model_id: str) -> Iterator[PackageZip]:
        """A model's package as a zip for a runtime (which sees every workspace's models),
        pinned while the block runs."""
        with self.registry.package_zip(model_id) as package:
            yield package

    def list_models(self, identity: Identity = ANONYMOUS) -> list[types.ModelInfo]:
        return [
            self._with_access(m, identity)
            for m in self.registry.list_models()
            if self.access.visible(m.id, identity)
        ]

    def publish(
        self, model_ref: str, published: bool, identity: Identity = ANONYMOUS
    ) -> tuple[str, bool]:
        model_id = self.visible_id(model_ref, identity)
        self.access.publish(model_id, published)
        return model_id, published

    def register_runtime(
        self, info: types.RuntimeInfo, cache_dir: str = "", identity: Identity = ANONYMOUS
    ) -> RegistrationReply:
        """A runtime's registration or heartbeat; with authentication on, a runtime id stays
        with the credential that registered it while it is alive."""
        return self.runtimes.register(info, cache_dir, owner=identity.token_id)

    def describe(self, model_ref: str, identity: Identity = ANONYMOUS) -> types.ModelInfo:
        """The model's metadata, and where runtimes have it loaded (with the serving path)."""
        info = self.registry.describe(self.visible_id(model_ref, identity))
        loaded = tuple(
            self._loaded_as_seen(m, identity)
            for r in self.runtimes.runtimes()
            for m in r.loaded_models
            if m.model_id == info.id
        )
        return self._with_access(info, identity).model_copy(update={"loaded": loaded})

    def model_info(self, model_ref: str, identity: Identity = ANONYMOUS) -> types.ModelInfo:
        """The model's tensors and weight formats from the cache's index, without its
        description: what a prediction needs to know, cheap enough for every call."""
        return self.stored_model_info(self.visible_id(model_ref, identity))

    def stored_model_info(self, model_id: str) -> types.ModelInfo:
        """A model's tensors and weight formats by full id, for a caller whose right to it was
        checked already (by a route)."""
        return self.registry.cache.get(model_id).info

    def available_runtimes(self) -> int:
        """Registered runtimes that can take a prediction now (readiness)."""
        return self.runtimes.available_count()

    def route(
        self,
        model_ref: str,
        weight_format: str = "",
        device: str = "",
        identity: Identity = ANONYMOUS,
        *,
        wait_s: float | None = None,
    ) -> Route:
        """Which runtimes serve the model, best first (one with it loaded comes first).
        ``wait_s``: the most to wait for a runtime to register (the call's remaining time)."""
        with self.registry.use(self.visible_id(model_ref, identity)) as package:
            candidates = self._candidates(package.model_id, weight_format, device, wait_s)
        # until its next heartbeat, the runtime counts one more client: a burst of streams
        # spreads instead of all going where the last heartbeat said it was quiet
        self.runtimes.note_routed(candidates[0].runtime_id)
        return Route(
            model_id=package.model_id,
            flight_uris=tuple(r.flight_uri for r in candidates),
            runtime_id=candidates[0].runtime_id,
        )

    def test_model(
        self,
        model_ref: str,
        weight_format: str = "",
        device: str = "",
        *,
        timeout_s: float | None = None,
        identity: Identity = ANONYMOUS,
    ) -> types.ValidationReport:
        """Run bioimageio.core's model test on the best runtime; the outcome is a report.

        A runtime that cannot be reached is skipped for the next candidate.
        """
        limit = self.settings.runtime_call_timeout_s
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        with self.registry.use(self.visible_id(model_ref, identity)) as package:
            candidates = self._candidates(package.model_id, weight_format, device, timeout_s)
            unreachable: list[str] = []
            for runtime in candidates:
                try:
                    return runtime_actions.run_model_test_on_runtime(
                        runtime.flight_uri,
                        model_id=package.model_id,
                        weight_format=weight_format,
                        device=device,
                        timeout_s=timeout,
                        caller=self._caller_for(runtime.runtime_id),
                    )
                except errors.UnavailableError as exc:
                    logger.warning("runtime %s unreachable: %s", runtime.runtime_id, exc)
                    unreachable.append(f"{runtime.runtime_id}: {exc.message}")
        raise errors.UnavailableError(
            "no runtime could be reached to test the model: " + "; ".join(unreachable),
            details={"model_id": package.model_id},
        )

    def remove_model(self, model_ref: str, identity: Identity = ANONYMOUS) -> ModelRemoval:
        """Remove a model from the caller's workspace, and from the cache when no workspace
        holds it any more (an admin removes it from every workspace). Then nothing answers for
        it: every runtime unloads it, the exchanges open on it end with NOT_FOUND, and the
        predictions running on it are waited for (``ModelRemoval.calls_in_flight``). Only an add of
        the same package waits for it meanwhile."""
        with ExitStack() as removing:
            with self._models_lock:
                model_id = self.visible_id(model_ref, identity)
                if not identity.sees_all_workspaces():
                    held, published = self.access.workspaces(model_id)
                    if identity.workspace not in held:
                        raise errors.PermissionDeniedError(
                            f"model {model_id[:12]} is published from another workspace: only "
                            "an admin may remove it",
                            details={"model_id": model_id},
                        )
                    if len(held) > 1 or published:
                        # open calls of this workspace's callers lose it within auth_cache_s
                        self.access.leave(model_id, identity.workspace)
                        return ModelRemoval(model_id, 0, 0)
                # The last workspace holding it, or an admin: the package goes. From here on
                # no reference resolves to it (a second removal finds it NOT_FOUND), and an add
                # of it waits until this one has ended.
                done = self._removals[model_id] = threading.Event()
                removing.callback(self._removal_ended, model_id, done)
                removing.enter_context(self.registry.withdrawn(model_id))  # left first
            return self._remove_package(model_id)

    def _removal_ended(self, model_id: str, done: threading.Event) -> None:
        with self._models_lock:
            if self._removals.get(model_id) is done:  # (a next removal may have begun)
                del self._removals[model_id]
        done.set()

    def _remove_package(self, model_id: str) -> ModelRemoval:
        """Unload it from every runtime at once, then remove it from the cache. Its access
        record goes only once it is gone (a model test using it runs out first, or nothing
        changes)."""
        # every runtime, not only those whose last heartbeat listed it: a heartbeat may be on
        # its way, and a runtime's exchanges may be open on it without it loaded
        runtimes = self.runtimes.runtimes()
        in_flight = 0
        if runtimes:
            with ThreadPoolExecutor(
                min(len(runtimes), _REMOVAL_CALLS), thread_name_prefix="modelrunner-removal"
            ) as calls:
                in_flight = sum(
                    calls.map(lambda r: self._remove_from_runtime(r, model_id), runtimes)
                )
        freed = self.registry.remove_withdrawn(model_id, wait_s=_REMOVAL_TIMEOUT_S)
        with self._models_lock:
            self.access.forget(model_id)
        if in_flight:
            logger.info(
                "model %s removed after waiting for %d prediction(s) in flight",
                model_id[:12],
                in_flight,
            )
        return ModelRemoval(model_id, freed, in_flight)

    def _remove_from_runtime(self, runtime: types.RuntimeInfo, model_id: str) -> int:
        """The predictions the runtime was running on the model, which it waited for."""
        waited = 0
        try:
            _, waited = runtime_actions.remove_model_on_runtime(
                runtime.flight_uri,
                model_id=model_id,
                timeout_s=_REMOVAL_TIMEOUT_S,
                caller=self._caller_for(runtime.runtime_id),
            )
        except errors.UnavailableError as exc:
            # a vanished runtime holds nothing; its registration expires on its own
            logger.warning(
                "runtime %s unreachable while removing model %s: %s",
                runtime.runtime_id,
                model_id[:12],
                exc,
            )
        self.runtimes.forget_loaded(runtime.runtime_id, model_id)
        return waited

    def _candidates(
        self, model_id: str, weight_format: str, device: str, wait_s: float | None = None
    ) -> list[types.RuntimeInfo]:
        info = self.registry.cache.get(model_id).info
        if weight_format and weight_format not in info.weight_formats:
            raise errors.InvalidArgumentError(
                f"model {model_id[:12]} has no {weight_format} weights; it has "
                f"{', '.join(info.weight_formats)}",
                details={"model_id": model_id, "weight_format": weight_format},
            )
        return self.runtimes.candidates(
            model_id,
            model_weight_formats=info.weight_formats,
            weight_format=weight_format,
            device=device,
            wait_s=wait_s,
        )

    def server_info(self, identity: Identity = ANONYMOUS) -> types.ServerInfo:
        """Versions, cache and runtimes; the models a runtime has loaded are listed only where
        the caller may see them."""
        runtimes = [
            r.model_copy(
                update={
                    "loaded_models": tuple(
                        self._loaded_as_seen(m, identity)
                        for m in r.loaded_models
                        if self.access.visible(m.model_id, identity)
                    )
                }
            )
            for r in self.runtimes.runtimes()
        ]
        cache = self.registry.cache_info()
        if not identity.sees_all_workspaces():
            # the cache's place, and the count and size of everyone's models, are the admins'
            # to know: they would show another workspace adding a model
            visible = [
                m for m in self.registry.list_models() if self.access.visible(m.id, identity)
            ]
            cache = cache.model_copy(
                update={
                    "directory": "",
                    "models": len(visible),
                    "used_bytes": sum(m.size_bytes for m in visible),
                }
            )
        return server_info(cache, runtimes).model_copy(update={"metrics_uri": self.metrics_uri})
