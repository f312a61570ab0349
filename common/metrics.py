"""Prometheus metrics of both planes (docs/metrics.md lists every series).

One registry per process (:data:`REGISTRY`): ``modelrunner serve`` publishes its control
service and its embedded runtime on one endpoint, a runtime process its own. Counters and
histograms are updated where the work happens (``entry_server/edge/call_metrics.py``,
``runtime_flight/exchange_metrics.py``); what is state, not events (queue depths, warm models,
the cache, GPUs), is read when Prometheus scrapes, from the sources the servers add
(:func:`add_state_source`), so the hot path pays for nothing it does not count.

Label values a client chooses are bounded by construction: a ``model`` label is only ever the
12-character short id of a model the server resolved (:func:`model_label`), whatever spelling
the caller used, or :data:`NO_MODEL`; and a model is named only once a call for it succeeded or
got as far as a runtime (an unknown id cannot make a series).
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)

FULL_ID_CHARS = 64
SHORT_ID_CHARS = 12
_LOWER_HEX = re.compile(r"[0-9a-f]+")

REGISTRY = CollectorRegistry()
"""This process's metrics (not prometheus_client's global registry: a library must not add its
series to its host's)."""

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.35,
    0.5,
    0.75,
    1.0,
    1.5,
    2.5,
    3.5,
    5.0,
    7.5,
    10.0,
    30.0,
    60.0,
    300.0,
)
"""From half a millisecond (a small frame on a GPU) to five minutes (adding a large model), each
bound at most about twice the one before between 5 ms and 10 s, where frames are: p50/p95/p99 come
from ``histogram_quantile`` over them, interpolated within a bucket, so coarser buckets made
estimates of up to twice the truth."""

REQUESTS = Counter(
    "modelrunner_requests",
    "Calls answered, by plane (control, runtime), method, model and status code",
    ["plane", "method", "model", "code"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "modelrunner_request_duration_seconds",
    "Time to answer a call (unary calls, whole predictions and model tests; a stream's frames "
    "are in modelrunner_frame_duration_seconds)",
    ["plane", "method"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
FRAMES = Counter(
    "modelrunner_frames",
    "Frames (samples) a runtime answered, by model and outcome (ok, error)",
    ["model", "outcome"],
    registry=REGISTRY,
)
FRAME_LATENCY = Histogram(
    "modelrunner_frame_duration_seconds",
    "Time from a frame taken off a stream's queue to its answer written (frames stacked in one "
    "batch share it)",
    ["model"],
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
TENSOR_BYTES = Counter(
    "modelrunner_tensor_bytes",
    "Tensor bytes a runtime received (in) and sent (out), by model",
    ["direction", "model"],
    registry=REGISTRY,
)
WARM_LOOKUPS = Counter(
    "modelrunner_warm_pipeline_lookups",
    "Predictions that found their model warm (hit) or had it loaded first (miss)",
    ["result"],
    registry=REGISTRY,
)


NO_MODEL = ""
"""The ``model`` label of calls that name no model, or no model the server resolved."""


def model_label(model_id: str) -> str:
    """A model's label value: the short id (as in ``modelrunner models``) of a canonical full
    id, which only the server's own resolution produces; anything else (a prefix, an alias, a
    spelling a client chose) is :data:`NO_MODEL`, so a label never holds what a caller typed."""
    if len(model_id) == FULL_ID_CHARS and _LOWER_HEX.fullmatch(model_id):
        return model_id[:SHORT_ID_CHARS]
    return NO_MODEL


@dataclass(frozen=True)
class Gauge:
    """One value of a state gauge, as a source reports it."""

    name: str
    help: str
    value: float
    labels: dict[str, str] = field(default_factory=dict)


StateSource = Callable[[], Iterable[Gauge]]


class _StateCollector(Collector):
    """Asks every source for its gauges at scrape time and merges them by name, so two
    runtimes in one process (tests, an embedded runtime) give one family each."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: dict[int, StateSource] = {}
        self._next = 0

    def add(self, source: StateSource) -> Callable[[], None]:
        with self._lock:
            key = self._next
            self._next += 1
            self._sources[key] = source

        def remove() -> None:
            with self._lock:
                self._sources.pop(key, None)

        return remove

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self._lock:
            sources = list(self._sources.values())
        families: dict[str, GaugeMetricFamily] = {}
        for source in sources:
            try:
                gauges = list(source())
            except Exception:
                logger.exception("a metrics source failed")
                continue
            for g in gauges:
                family = families.get(g.name)
                if family is None:
                    family = families[g.name] = GaugeMetricFamily(
                        g.name, g.help, labels=list(g.labels)
                    )
                family.add_metric(list(g.labels.values()), g.value)
        yield from families.values()


_STATE = _StateCollector()
REGISTRY.register(_STATE)


def add_state_source(source: StateSource) -> Callable[[], None]:
    """Read ``source()`` at every scrape; returns the function that removes it (a server that
    stops)."""
    return _STATE.add(source)


@dataclass
class MetricsEndpoint:
    """A running ``/metrics`` HTTP endpoint."""

    uri: str
    _server: object
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()  # type: ignore[attr-defined]
        self._server.server_close()  # type: ignore[attr-defined]
        self._thread.join(timeout=5)


def serve_metrics(host: str, port: int, *, advertise_host: str | None = None) -> MetricsEndpoint:
    """Publish :data:`REGISTRY` on ``http://host:port/metrics`` (port 0: a free one).

    Without authentication: bind it to loopback (the default) or a network only Prometheus
    reaches. GPU gauges (nvidia-ml-py) are added with the first endpoint."""
    from modelrunner import errors

    _add_gpu_source_once()
    try:
        server, thread = start_http_server(port, addr=host, registry=REGISTRY)
    except OSError as e:
        raise errors.UnavailableError(f"cannot publish metrics on {host}:{port}: {e}") from e
    bound = server.server_address[1]
    shown = advertise_host or ("127.0.0.1" if host in ("", "0.0.0.0", "::") else host)
    if ":" in shown and not shown.startswith("["):
        shown = f"[{shown}]"
    uri = f"http://{shown}:{bound}/metrics"
    logger.info("metrics at %s", uri)
    return MetricsEndpoint(uri, server, thread)


_gpu_source_added = False
_gpu_lock = threading.Lock()


def _add_gpu_source_once() -> None:
    global _gpu_source_added
    with _gpu_lock:
        if _gpu_source_added:
            return
        _gpu_source_added = True
        source = _nvml_source()
        if source is not None:
            add_state_source(source)


def _nvml_source() -> StateSource | None:
    """GPU memory and utilisation per device from NVML, when nvidia-ml-py and a driver are
    there; otherwise no GPU series at all (a CPU host)."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001 - pynvml raises NVMLError subclasses: no driver, no GPU
        return None
    if count == 0:
        return None

    def read() -> Iterator[Gauge]:
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            labels = {"device": f"cuda:{i}"}
            yield Gauge(
                "modelrunner_gpu_memory_used_bytes", "GPU memory in use", memory.used, labels
            )
            yield Gauge(
                "modelrunner_gpu_memory_total_bytes", "GPU memory in all", memory.total, labels
            )
            yield Gauge(
                "modelrunner_gpu_utilization_ratio",
                "Share of the last sample period a kernel ran on the GPU (0-1)",
                rates.gpu / 100.0,
                labels,
            )

    return read
