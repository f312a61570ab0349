"""The control service's logic layer: the registry plus the runtimes, transport free.

The gRPC servicer is a thin shell around this object; an embedded runtime or a test may call it
directly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from modelrunner import errors, types
from modelrunner.entry_server import runtime_actions
from modelrunner.entry_server.registry import ModelRegistry
from modelrunner.entry_server.runtimes import Registration, RuntimeDirectory
from modelrunner.entry_server.server_info import server_info
from modelrunner.settings import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Route:
    model_id: str
    """The resolved, full model id."""
    flight_uris: tuple[str, ...]
    """Best first."""
    runtime_id: str
    """The best runtime."""


class ControlPlane:
    def __init__(
        self, settings: Settings, registry: ModelRegistry, runtimes: RuntimeDirectory
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.runtimes = runtimes

    def register_runtime(self, info: types.RuntimeInfo, cache_dir: str = "") -> Registration:
        return self.runtimes.register(info, cache_dir)

    def describe(self, model_ref: str) -> types.ModelInfo:
        """The model's metadata, and where runtimes have it loaded (with the serving path)."""
        info = self.registry.describe(model_ref)
        loaded = tuple(
            m for r in self.runtimes.runtimes() for m in r.loaded_models if m.model_id == info.id
        )
        return info.model_copy(update={"loaded": loaded})

    def route(self, model_ref: str, weight_format: str = "", device: str = "") -> Route:
        """Which runtimes serve the model, best first (one with it loaded comes first)."""
        with self.registry.use(model_ref) as package:
            candidates = self._candidates(package.model_id, weight_format, device)
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
    ) -> types.ValidationReport:
        """Run bioimageio.core's model test on the best runtime; the outcome is a report.

        A runtime that cannot be reached is skipped for the next candidate.
        """
        limit = self.settings.runtime_call_timeout_s
        timeout = limit if timeout_s is None else min(timeout_s, limit)
        with self.registry.use(model_ref) as package:
            candidates = self._candidates(package.model_id, weight_format, device)
            unreachable: list[str] = []
            for runtime in candidates:
                try:
                    return runtime_actions.run_model_test_on_runtime(
                        runtime.flight_uri,
                        model_id=package.model_id,
                        weight_format=weight_format,
                        device=device,
                        timeout_s=timeout,
                    )
                except errors.UnavailableError as exc:
                    logger.warning("runtime %s unreachable: %s", runtime.runtime_id, exc)
                    unreachable.append(f"{runtime.runtime_id}: {exc.message}")
        raise errors.UnavailableError(
            "no runtime could be reached to test the model: " + "; ".join(unreachable),
            details={"model_id": package.model_id},
        )

    def remove_model(self, model_ref: str) -> tuple[str, int]:
        """Remove a model: runtimes that have it warm unload it first (a runtime serving it
        right now refuses with ModelInUseError, and nothing is removed)."""
        model_id = self.registry.resolve(model_ref)
        for runtime in self.runtimes.runtimes():
            if not any(m.model_id == model_id for m in runtime.loaded_models):
                continue
            try:
                runtime_actions.unload_model_on_runtime(
                    runtime.flight_uri, model_id=model_id, timeout_s=30.0
                )
            except errors.UnavailableError as exc:
                # a vanished runtime holds nothing; its registration expires on its own
                logger.warning(
                    "runtime %s unreachable while unloading: %s", runtime.runtime_id, exc
                )
            self.runtimes.forget_loaded(runtime.runtime_id, model_id)
        return self.registry.remove(model_id)

    def _candidates(
        self, model_id: str, weight_format: str, device: str
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
        )

    def server_info(self) -> types.ServerInfo:
        return server_info(self.registry.cache_info(), self.runtimes.runtimes())
