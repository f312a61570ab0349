"""Prometheus metrics of both planes and ``modelrunner status``: the endpoints a server
publishes with ``metrics_port`` and reports over the wire, calls counted by method, model and
status code, frames and bytes counted and timed, the runtime's state read at scrape time, and
the terminal view built from them. Uses the shared server: the metrics registry is the
process's, so its calls are counted whether or not an endpoint publishes them."""

from __future__ import annotations

import json
import math
import re
import sys
import time
import types
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modelrunner import errors
from modelrunner.app import cli
from modelrunner.app.cli_status import _quantile
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.converters import from_pb_server_info, to_pb_server_info
from modelrunner.metrics import REGISTRY, MetricsEndpoint, serve_metrics
from modelrunner.serving import RunningServer, start_runtime, start_serving
from modelrunner.settings import Settings
from modelrunner.types import RuntimeInfo, ServerInfo


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def _scrape(uri: str) -> dict[str, list[dict[str, str]]]:
    with urllib.request.urlopen(uri, timeout=5) as response:
        text = response.read().decode()
    families: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            families.setdefault(s.name, []).append(s.labels)
    return families


@pytest.fixture(scope="module")
def endpoint() -> Iterator[MetricsEndpoint]:
    published = serve_metrics("127.0.0.1", 0)
    yield published
    published.close()


def test_both_planes_publish_where_they_say(tmp_path_factory: pytest.TempPathFactory) -> None:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path_factory.mktemp("metrics-cache"),
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        metrics_port=0,
    )
    control = start_serving(settings, with_runtime=False)
    try:
        runtime = start_runtime(settings, f"127.0.0.1:{control.control.port}")
        try:
            with ModelRunnerClient(control.address) as client:
                info = client.server_info()
            (registered,) = info.runtimes
            # the control service and a runtime process each publish their own, on loopback
            assert info.metrics_uri.startswith("http://127.0.0.1:")
            assert registered.metrics_uri == runtime.metrics_uri != info.metrics_uri
            assert "modelrunner_cache_models" in _scrape(info.metrics_uri)
            assert "modelrunner_queue_depth" in _scrape(registered.metrics_uri)
        finally:
            runtime.stop()
    finally:
        control.stop()
    with pytest.raises(OSError):  # closed with its server
        urllib.request.urlopen(info.metrics_uri, timeout=2)


def test_the_new_fields_cross_the_wire() -> None:
    info = ServerInfo(
        modelrunner_version="0",
        metrics_uri="http://10.0.0.1:9100/metrics",
        runtimes=(
            RuntimeInfo(
                runtime_id="r",
                flight_uri="grpc://10.0.0.2:8815",
                queue_depth=3,
                metrics_uri="http://10.0.0.2:9101/metrics",
            ),
        ),
    )
    assert from_pb_server_info(to_pb_server_info(info)) == info


def test_calls_are_counted_by_method_model_and_code(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    model = identity.id[:12]
    described = _value(
        "modelrunner_requests_total",
        plane="control",
        method="DescribeModel",
        model=model,
        code="OK",
    )
    timed = _value(
        "modelrunner_request_duration_seconds_count", plane="control", method="DescribeModel"
    )
    client.describe(identity.id)
    assert (
        _value(
            "modelrunner_requests_total",
            plane="control",
            method="DescribeModel",
            model=model,
            code="OK",
        )
        == described + 1
    )
    assert (
        _value(
            "modelrunner_request_duration_seconds_count", plane="control", method="DescribeModel"
        )
        == timed + 1
    )


def test_an_unknown_model_id_makes_no_series_of_its_own(client: ModelRunnerClient) -> None:
    """Attack: a client sends made-up model ids to grow the metrics without bound."""
    not_found = _value(
        "modelrunner_requests_total",
        plane="control",
        method="DescribeModel",
        model="",
        code="NOT_FOUND",
    )
    for i in range(5):
        with pytest.raises(errors.ModelNotFoundError):
            client.describe(f"made-up-model-{i}")
    assert (
        _value(
            "modelrunner_requests_total",
            plane="control",
            method="DescribeModel",
            model="",
            code="NOT_FOUND",
        )
        == not_found + 5
    )
    labels = [
        s.labels.get("model", "")
        for m in REGISTRY.collect()
        for s in m.samples
        if "model" in s.labels
    ]
    assert not any("made-up" in v for v in labels)


def test_stream_frames_and_bytes_are_counted_and_timed(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    model = identity.id[:12]
    frame = np.ones((1, 1, 16, 16), np.float32)
    frames = _value("modelrunner_frames_total", model=model, outcome="ok")
    bytes_in = _value("modelrunner_tensor_bytes_total", direction="in", model=model)
    timed = _value("modelrunner_frame_duration_seconds_count", model=model)
    streams = _value(
        "modelrunner_requests_total", plane="runtime", method="stream", model=model, code="OK"
    )
    assert len(list(client.predict_stream(identity.id, [frame] * 10))) == 10
    # the runtime counts a frame once its answer is written, the stream once it ended: a
    # moment after the client read them
    _eventually(
        lambda: _value("modelrunner_frames_total", model=model, outcome="ok") == frames + 10
    )
    _eventually(
        lambda: (
            _value(
                "modelrunner_requests_total",
                plane="runtime",
                method="stream",
                model=model,
                code="OK",
            )
            == streams + 1
        )
    )
    assert (
        _value("modelrunner_tensor_bytes_total", direction="in", model=model)
        == bytes_in + 10 * frame.nbytes
    )
    assert _value("modelrunner_frame_duration_seconds_count", model=model) == timed + 10


def test_the_runtimes_state_is_read_at_scrape_time(
    server: RunningServer, identity: ModelInfo, endpoint: MetricsEndpoint
) -> None:
    assert server.runtime is not None
    runtime_id = server.runtime.server.service.runtime_id
    families = _scrape(endpoint.uri)
    assert {"runtime": runtime_id} in families["modelrunner_queue_depth"]
    warm = [
        labels
        for labels in families["modelrunner_warm_model_memory_bytes"]
        if labels["runtime"] == runtime_id
    ]
    assert any(labels["model"] == identity.id[:12] for labels in warm)
    assert "modelrunner_cache_used_bytes" in families


def test_quantiles_come_from_the_buckets_filled_between_scrapes() -> None:
    name = "modelrunner_frame_duration_seconds"

    def buckets(counts: dict[float, float]) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        return {
            (f"{name}_bucket", (("le", "+Inf" if math.isinf(le) else str(le)), ("model", "m"))): c
            for le, c in counts.items()
        }

    before = buckets({0.01: 100.0, 0.1: 100.0, math.inf: 100.0})
    # 100 frames since: 90 under 10 ms, 10 between 10 and 100 ms
    after = buckets({0.01: 190.0, 0.1: 200.0, math.inf: 200.0})
    p95 = _quantile(0.95, name, {"model": "m"}, before, after)
    assert p95 == pytest.approx(0.01 + (0.1 - 0.01) * 0.5)


def test_status_once_shows_runtimes_models_and_rates(
    server: RunningServer,
    client: ModelRunnerClient,
    identity: ModelInfo,
    endpoint: MetricsEndpoint,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert server.runtime is not None
    list(client.predict_stream(identity.id, [np.ones((1, 1, 16, 16), np.float32)] * 5))
    argv = ["status", "--once", "--server", server.address, "--metrics", endpoint.uri]
    assert cli.main([*argv, "--interval", "0.2"]) == 0
    shown = capsys.readouterr().out
    assert server.runtime.server.service.runtime_id in shown
    assert "1 runtime(s), 1 available" in shown
    model_line = next(line for line in shown.splitlines() if line.startswith(identity.id[:12]))
    assert "ms" in model_line  # its p95 frame latency
    assert "DescribeModel" in shown or "GetServerInfo" in shown


def test_the_grafana_dashboard_reads_only_series_that_exist() -> None:
    root = Path(__file__).resolve().parents[2]
    dashboard = (root / "docs" / "grafana" / "modelrunner.json").read_text()
    queried = set(re.findall(r"modelrunner_[a-z_]+", dashboard)) - {"modelrunner"}
    sources = "".join(
        (root / p).read_text()
        for p in (
            "common/metrics.py",
            "entry_server/state_metrics.py",
            "runtime_flight/exchange_metrics.py",
        )
    )
    for name in queried:
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        assert f'"{base}"' in sources, name


def test_gpu_gauges_come_from_nvml_where_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: a stand-in for nvidia-ml-py's module, with one device."""
    from modelrunner import metrics

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: f"handle{i}",
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=3 * 2**30, total=80 * 2**30),
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    source = metrics._nvml_source()
    assert source is not None
    gauges = {g.name: g for g in source()}
    assert gauges["modelrunner_gpu_memory_used_bytes"].value == 3 * 2**30
    assert gauges["modelrunner_gpu_utilization_ratio"].value == pytest.approx(0.42)
    assert gauges["modelrunner_gpu_memory_total_bytes"].labels == {"device": "cuda:0"}


def test_no_gpu_gauges_without_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelrunner import metrics

    def no_driver() -> None:
        raise RuntimeError("NVML Shared Library Not Found")

    monkeypatch.setitem(sys.modules, "pynvml", types.SimpleNamespace(nvmlInit=no_driver))
    assert metrics._nvml_source() is None


def test_runtime_actions_are_counted_and_timed(
    client: ModelRunnerClient, identity: ModelInfo
) -> None:
    loads = _value(
        "modelrunner_requests_total", plane="runtime", method="load_model", model="", code="OK"
    )
    client.load(identity.id)
    assert (
        _value(
            "modelrunner_requests_total", plane="runtime", method="load_model", model="", code="OK"
        )
        == loads + 1
    )
    assert _value(
        "modelrunner_request_duration_seconds_count", plane="runtime", method="load_model"
    ) >= (loads + 1)


def test_status_json_is_one_object_per_refresh(
    server: RunningServer,
    identity: ModelInfo,
    endpoint: MetricsEndpoint,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["status", "--once", "--json", "--server", server.address, "--metrics", endpoint.uri]
    assert cli.main([*argv, "--interval", "0.1"]) == 0
    shown = json.loads(capsys.readouterr().out)
    (runtime,) = shown["runtimes"]
    assert runtime["available"] and identity.id in runtime["warm_models"]
    assert any(c["method"] == "GetServerInfo" for c in shown["calls"])


def test_an_idle_session_is_not_queue_depth(server: RunningServer, identity: ModelInfo) -> None:
    """A session waits for its client's next sample most of its life: counting it would make
    every runtime a client talks to look busy to placement."""
    assert server.runtime is not None
    runtime = server.runtime.server
    with ModelRunnerClient(server.address, timeout=60) as own:
        own.predict(identity.id, np.ones((1, 1, 16, 16), np.float32))
        _eventually(lambda: runtime.active_sessions >= 1)
        # the session stays open, idle (once its answer is written); nothing else runs now
        _eventually(lambda: runtime.queue_depth == 0)
        assert runtime.active_sessions >= 1 and runtime.active_exchanges >= 1
