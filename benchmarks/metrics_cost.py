"""What the Prometheus instrumentation costs on the runtime's hot path, in isolation:

    python -m benchmarks.metrics_cost

A stream frame (``ExchangeObservation.frame``), a session sample (the same, timed as a call
too) and an exchange's start and end (``observing``), each repeated and timed; compare with a
frame's whole time in ``benchmarks.run`` (about 2-3 ms for 512x512 on the development machine).
"""

from __future__ import annotations

import time

import numpy as np

from modelrunner.runtime_flight.exchange_metrics import observing

MODEL = "0" * 64


def per_call_us(kind: str, n: int) -> float:
    outputs = {"output": np.zeros((1, 1, 512, 512), np.float32)}
    with observing(kind, MODEL) as seen:
        start = time.perf_counter()
        for _ in range(n):
            seen.frame(outputs["output"].nbytes, outputs, 0.001)
        return (time.perf_counter() - start) / n * 1e6


def per_exchange_us(n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        with observing("stream", MODEL):
            pass
    return (time.perf_counter() - start) / n * 1e6


def main() -> None:
    best = {
        "stream frame": min(per_call_us("stream", 100_000) for _ in range(3)),
        "session sample": min(per_call_us("session", 100_000) for _ in range(3)),
        "exchange start and end": min(per_exchange_us(20_000) for _ in range(3)),
    }
    for what, us in best.items():
        print(f"{what}: {us:.2f} µs (best of 3)")


if __name__ == "__main__":
    main()
