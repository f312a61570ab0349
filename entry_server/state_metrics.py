"""The control service's state as Prometheus gauges, read at scrape time: the model cache
(size, budget, models) and the runtimes it routes to, with the queue depth each reported in its
last heartbeat (a runtime without a metrics endpoint of its own is still seen here)."""

from __future__ import annotations

from collections.abc import Iterator

from modelrunner.entry_server.registry import ModelRegistry
from modelrunner.entry_server.runtimes.directory import RuntimeDirectory
from modelrunner.metrics import Gauge, StateSource, model_label


def control_state(registry: ModelRegistry, runtimes: RuntimeDirectory) -> StateSource:
    def read() -> Iterator[Gauge]:
        cache = registry.cache_info()
        yield Gauge("modelrunner_cache_used_bytes", "Model cache size on disk", cache.used_bytes)
        yield Gauge("modelrunner_cache_budget_bytes", "Model cache budget", cache.budget_bytes)
        yield Gauge("modelrunner_cache_models", "Models in the cache", cache.models)
        listed = runtimes.runtimes()
        for state, wanted in (("available", True), ("unavailable", False)):
            yield Gauge(
                "modelrunner_runtimes",
                "Registered runtimes, by whether they take predictions",
                sum(1 for r in listed if r.available == wanted),
                {"state": state},
            )
        for r in listed:
            yield Gauge(
                "modelrunner_runtime_reported_queue_depth",
                "Predictions in progress on a runtime, as its last heartbeat said",
                r.queue_depth,
                {"runtime": r.runtime_id},
            )
            for m in r.loaded_models:
                yield Gauge(
                    "modelrunner_runtime_reported_model_memory_bytes",
                    "Memory a warm model takes on a runtime, as its last heartbeat said",
                    m.memory_bytes,
                    {"runtime": r.runtime_id, "model": model_label(m.model_id), "device": m.device},
                )

    return read
