"""``modelrunner status`` tells the truth: frame counts, means and p95 latencies that agree with
what a client timed, a hint when no metrics endpoint answers, no model row without a model and
each runtime once."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator

import numpy as np
import pytest

from modelrunner.app import cli
from modelrunner.app.cli_status import Samples, _quantile, frame_times, rates, render, scrape
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.metrics import LATENCY_BUCKETS, MetricsEndpoint, serve_metrics
from modelrunner.serving import RunningServer
from modelrunner.types import LoadedModel, RuntimeInfo, ServerInfo

FRAME = "modelrunner_frame_duration_seconds"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MetricsEndpoint]:
    published = serve_metrics("127.0.0.1", 0)
    yield published
    published.close()


pytestmark = pytest.mark.alone  # compares the server's frame times with the client's own


def test_frames_mean_and_p95_agree_with_the_clients_own_timings(
    client: ModelRunnerClient, example_nuclei: ModelInfo, endpoint: MetricsEndpoint
) -> None:
    """Each frame's server time lies inside the client's round trip: the status view's mean is
    at most the client's, and its p95 no more than the histogram's resolution above the
    slowest frame the client saw."""
    image = np.random.default_rng(0).random((256, 256), dtype=np.float32) * 3000
    client.predict(example_nuclei.id, image)  # loaded, warm: the frames below are frames only
    before = scrape([endpoint.uri])
    timings = []
    for _ in range(8):
        started = time.perf_counter()
        client.predict(example_nuclei.id, image)
        timings.append(time.perf_counter() - started)
    # the runtime counts a frame just after answering it: the last one may come a moment later
    deadline = time.monotonic() + 5
    while True:
        after = scrape([endpoint.uri])
        times = frame_times(example_nuclei.id[:12], before, after)
        if (times is not None and times.frames >= 8) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert times is not None and times.frames == 8 and not times.whole_run
    assert times.mean_s <= float(np.mean(timings))
    assert times.mean_s >= 0.5 * float(np.mean(timings))  # a round trip is mostly the frame
    assert times.p95_s is not None
    assert min(timings) / 2 <= times.p95_s <= _next_bucket_bound(max(timings))


def _next_bucket_bound(seconds: float) -> float:
    return min(b for b in (*LATENCY_BUCKETS, math.inf) if b >= seconds)


def _histogram(model: str, values: list[float]) -> Samples:
    samples: Samples = {}
    for le in (*LATENCY_BUCKETS, math.inf):
        key = (f"{FRAME}_bucket", (("le", "+Inf" if math.isinf(le) else str(le)), ("model", model)))
        samples[key] = float(sum(v <= le for v in values))
    samples[(f"{FRAME}_sum", (("model", model),))] = sum(values)
    samples[(f"{FRAME}_count", (("model", model),))] = float(len(values))
    return samples


def test_one_slow_frame_among_fast_ones_is_not_made_slower() -> None:
    """The run the issue saw: four frames, the first waiting 2.6 s for its model to load.
    Interpolating in its bucket made 4.5 s; no frame took longer than 2.6 s, and the sum says
    so."""
    frames = [2.6, 0.09, 0.09, 0.09]
    p95 = _quantile(0.95, FRAME, {"model": "m"}, {}, _histogram("m", frames))
    assert p95 is not None and 2.5 <= p95 <= 2.6 + 3 * (0.09 - 0.075) + 1e-9
    # nothing since the previous scrape: the whole run's, and said so
    run = _histogram("m", frames)
    times = frame_times("m", run, run)
    assert times is not None and times.whole_run and times.frames == 4
    assert times.mean_s == pytest.approx(sum(frames) / 4)
    assert times.p95_s == pytest.approx(p95)


def test_the_window_counts_only_its_own_frames() -> None:
    before = _histogram("m", [2.6])
    after = _histogram("m", [2.6, 0.02, 0.02, 0.02])
    times = frame_times("m", before, after)
    assert times is not None and not times.whole_run and times.frames == 3
    assert times.mean_s == pytest.approx(0.02)
    assert times.p95_s is not None and 0.015 < times.p95_s <= 0.025


def _info(*runtimes: RuntimeInfo) -> ServerInfo:
    return ServerInfo(modelrunner_version="0.1.0", runtimes=runtimes)


def _runtime(runtime_id: str, *formats: str) -> RuntimeInfo:
    return RuntimeInfo(
        runtime_id=runtime_id,
        flight_uri=f"grpc://127.0.0.1:{len(runtime_id)}",
        available=True,
        loaded_models=tuple(
            LoadedModel(model_id="a" * 64, weight_format=f, device="cpu", memory_bytes=2**20)
            for f in formats
        ),
    )


def test_each_runtime_once_and_no_row_without_a_model() -> None:
    """A model warm in two weight formats on one runtime is one runtime in WARM ON; a runtime
    listed twice is shown once; the series of no model (an action's) makes no row."""
    info = _info(_runtime("gpu-1", "onnx", "torchscript"), _runtime("gpu-1", "onnx"))
    samples = _histogram("", [0.01])
    samples[("modelrunner_frames_total", (("model", ""), ("outcome", "ok")))] = 0.0
    shown = render("host:50051", info, {}, samples, 2.0, ["http://127.0.0.1:9/metrics"])
    lines = shown.splitlines()
    assert "1 runtime(s), 1 available" in lines[0]
    assert sum(line.startswith("gpu-1 ") for line in lines) == 1
    model_rows = [line for line in lines if line.startswith("aaaaaaaaaaaa")]
    assert len(model_rows) == 1 and model_rows[0].endswith("  gpu-1")
    assert "(none)" not in shown
    header = lines.index(next(line for line in lines if line.startswith("MODEL")))
    assert lines[header + 1] == model_rows[0]  # no other model row
    assert rates({}, samples, 2.0).frame_times == {}


def test_without_a_metrics_endpoint_status_says_how_to_get_one(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["status", "--once", "--server", server.address, "--interval", "0.1"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[1] == (
        "no metrics endpoint: no frames/s or latencies. Start the server with --metrics-port 0 "
        "(any free port) or --metrics-port PORT to see them (docs/metrics.md)"
    )


def test_an_endpoint_that_does_not_answer_is_named(
    server: RunningServer, capsys: pytest.CaptureFixture[str]
) -> None:
    silent = "http://127.0.0.1:9/metrics"
    argv = ["status", "--once", "--server", server.address, "--metrics", silent]
    assert cli.main([*argv, "--interval", "0.1"]) == 0
    shown = capsys.readouterr().out.splitlines()
    assert shown[1] == (
        f"none of the 1 metrics endpoint(s) answered ({silent}): no frames/s or latencies"
    )
