"""The runtime's Prometheus metrics: each exchange counted by kind (predict, stream, session),
model and status code, with its duration for single predictions; each frame counted and timed,
with the tensor bytes in and out; and, read at scrape time, the runtime's queue depth and its
warm models with their memory.

A frame costs a few counter increments on label children bound once per exchange
(benchmarks/README.md has the measured cost).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.metrics import (
    FRAME_LATENCY,
    FRAMES,
    LATENCY,
    REQUESTS,
    TENSOR_BYTES,
    Gauge,
    StateSource,
    model_label,
)


class ExchangeObservation:
    """What one exchange did, counted as it goes."""

    def __init__(self, kind: str, model_id: str) -> None:
        self.kind = kind
        self.model = model_label(model_id)
        self.frames_answered = 0
        self.cancelled = False
        """Set when the client cancelled a stream before its end (a session's client closing it
        is how a session ends)."""
        self.ended_idle = False
        """Set when a session's client went away while the session waited for its next frame:
        a normal end, not a cancelled prediction."""
        self._series: _FrameSeries | None = None
        """Bound at the first frame: an action, or an exchange for an unknown model, makes no
        series (``modelrunner status`` would show a model named "")."""

    def frame(
        self,
        bytes_in: int,
        outputs: Mapping[str, np.ndarray] | None,
        seconds: float,
        error: errors.ModelRunnerError | None = None,
    ) -> None:
        """One frame answered: with its outputs, or with its ``error`` (``outputs`` None)."""
        self.frames_answered += 1
        series = self._series
        if series is None:
            series = self._series = _FrameSeries(self.kind, self.model)
        series.bytes_in.inc(bytes_in)
        if outputs is None:
            series.failed.inc()
            if series.call_latency is not None:
                code = error.code.name if error is not None else "INTERNAL"
                REQUESTS.labels("runtime", "predict", self.model, code).inc()
            return
        series.ok.inc()
        series.bytes_out.inc(sum(a.nbytes for a in outputs.values()))
        series.latency.observe(seconds)
        if series.call_latency is not None:
            series.call_latency.observe(seconds)
        if series.calls_ok is not None:
            series.calls_ok.inc()


class _FrameSeries:
    """The label children one exchange's frames count on, bound once."""

    def __init__(self, kind: str, model: str) -> None:
        self.ok = FRAMES.labels(model, "ok")
        self.failed = FRAMES.labels(model, "error")
        self.latency = FRAME_LATENCY.labels(model)
        self.bytes_in = TENSOR_BYTES.labels("in", model)
        self.bytes_out = TENSOR_BYTES.labels("out", model)
        # a session's samples are single predictions on one open exchange (the client's
        # predict): each is timed as a call too
        session = kind == "session"
        self.call_latency = LATENCY.labels("runtime", "predict") if session else None
        self.calls_ok = REQUESTS.labels("runtime", "predict", model, "OK") if session else None


@contextmanager
def observing(kind: str, model_id: str) -> Iterator[ExchangeObservation]:
    """Count the exchange (or action: ``load_model``, ``test_model``, ..., without a model)
    when it ends, with the status code it ends with."""
    seen = ExchangeObservation(kind, model_id)
    start = time.perf_counter()
    code = "OK"
    try:
        yield seen
    except errors.ModelRunnerError as e:
        code = e.code.name
        raise
    except flight.FlightCancelledError:
        code = "CANCELLED"
        raise
    except BaseException:
        code = "INTERNAL"
        raise
    finally:
        if code == "OK" and seen.cancelled:
            code = "CANCELLED"
        # an unknown model never answered a frame: it gets no series of its own
        reached = code == "OK" or seen.frames_answered > 0
        REQUESTS.labels("runtime", kind, seen.model if reached else "", code).inc()
        if kind not in ("stream", "session"):  # a stream's frames are timed one by one
            LATENCY.labels("runtime", kind).observe(time.perf_counter() - start)
        if kind == "predict" and code == "OK":
            FRAMES.labels(seen.model, "ok").inc()


def runtime_state(
    runtime_id: Callable[[], str], queue_depth: Callable[[], int], loaded: Callable[[], tuple]
) -> StateSource:
    """Gauges for one runtime: ``queue_depth()`` predictions in progress, ``loaded()`` its warm
    models (``types.LoadedModel``)."""

    def read() -> Iterator[Gauge]:
        labels = {"runtime": runtime_id()}
        yield Gauge(
            "modelrunner_queue_depth",
            "Predictions, streams and sessions in progress on a runtime",
            queue_depth(),
            labels,
        )
        models = loaded()
        yield Gauge("modelrunner_warm_models", "Warm pipelines on a runtime", len(models), labels)
        for m in models:
            yield Gauge(
                "modelrunner_warm_model_memory_bytes",
                "Memory a warm pipeline takes (its estimate on its device)",
                m.memory_bytes,
                {
                    **labels,
                    "model": model_label(m.model_id),
                    "weight_format": m.weight_format,
                    "device": m.device,
                },
            )
            yield Gauge(
                "modelrunner_warm_model_requests",
                "Predictions a warm pipeline served since it was loaded",
                m.requests,
                {**labels, "model": model_label(m.model_id)},
            )

    return read
