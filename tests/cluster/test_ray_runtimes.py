"""Runtimes as Ray actors on a real local Ray cluster: a head node and a worker node, each its
own raylet and object store on this machine (``ray.cluster_utils.Cluster``), the worker
offering a custom resource ``fake_gpu`` that stands for a GPU.

One cluster and one control service for the module (starting them costs most of its time):
two CPU runtimes and one "GPU" runtime, heartbeats every 0.5 s, scaling up to four runtimes. The tests that change the
runtimes (a kill, spreading) leave every runtime registered and idle again.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip(
    "ray", reason="Ray is not installed: the cluster tests need `pip install -e .[cluster]`"
)

from ray.cluster_utils import Cluster  # noqa: E402 - after the skip above

from modelrunner import errors, types  # noqa: E402
from modelrunner.client import ModelRunnerClient  # noqa: E402
from modelrunner.cluster.ray_runtimes import RayRuntimes  # noqa: E402
from modelrunner.cluster.ray_serving import RayPlan, joined_ray, start_ray_serving  # noqa: E402
from modelrunner.cluster.ray_token_auth import (  # noqa: E402
    RayAuthChoice,
    choose_ray_auth,
    reread_ray_auth,
)
from modelrunner.serving import RunningServer  # noqa: E402
from modelrunner.settings import Settings  # noqa: E402

pytestmark = pytest.mark.ray

HEARTBEAT_S = 0.5
OBJECT_STORE_BYTES = 80 * 1024**2
FRAME = np.arange(16 * 16, dtype=np.float32).reshape(1, 1, 16, 16)


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[Cluster]:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "object_store_memory": OBJECT_STORE_BYTES,
            "include_dashboard": False,
        },
    )
    cluster.add_node(num_cpus=3, object_store_memory=OBJECT_STORE_BYTES, resources={"fake_gpu": 2})
    # joined as `serve --ray` joins, from a shell set up for another cluster: Ray's token mode
    # on, with a token. This cluster runs without token mode, where a driver in token mode
    # loses every actor, so the join turns it off (cluster/ray_token_auth.py)
    with pytest.MonkeyPatch.context() as shell:
        shell.setenv("RAY_AUTH_MODE", "token")
        shell.setenv("RAY_AUTH_TOKEN", "c" * 64)
        try:
            with joined_ray(cluster.address):
                yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()
    reread_ray_auth()


@pytest.fixture(scope="module")
def on_ray(
    ray_cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, RayRuntimes]]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        cache_dir=tmp_path_factory.mktemp("ray-cache"),
        heartbeat_interval_s=HEARTBEAT_S,
        grace_period_s=1.0,
        runtime_wait_s=10.0,
        metrics_port=0,
        spread_queue_depth=1,
        idle_unload_s=4.0,
        bioimageio_base_url="http://127.0.0.1:9/unused",
    )
    plan = RayPlan(
        ray_cluster.address,
        cpu_runtimes=2,
        gpu_runtimes=1,
        gpu_resource="fake_gpu",
        max_runtimes=4,
    )
    with start_ray_serving(settings, plan) as started:
        yield started


@pytest.fixture(scope="module")
def ray_client(on_ray: tuple[RunningServer, RayRuntimes]) -> Iterator[ModelRunnerClient]:
    with ModelRunnerClient(on_ray[0].address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def model(ray_client: ModelRunnerClient, tiny: Callable[[str], Path]) -> types.ModelInfo:
    return ray_client.add_model(tiny("onnx"))


def _wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _warm_on(client: ModelRunnerClient, model_id: str) -> set[str]:
    return {
        r.runtime_id
        for r in client.server_info().runtimes
        if any(m.model_id == model_id for m in r.loaded_models)
    }


def _loaded(client: ModelRunnerClient, model_id: str) -> str:
    """Load the model (on the runtime the control service picks) and wait for that runtime's
    heartbeat to say so; its id."""
    client.load(model_id)
    _wait_until(lambda: len(_warm_on(client, model_id)) == 1)
    (warm,) = _warm_on(client, model_id)
    return warm


def _spread_beyond(client: ModelRunnerClient, model_id: str, first: str) -> bool:
    """Warm on ``first`` and on at least one other runtime."""
    warm = _warm_on(client, model_id)
    return first in warm and len(warm) >= 2


def _route(running: RunningServer, model: types.ModelInfo) -> str:
    """The runtime the control service would send the model's next client to (without
    sending one: a route counts in the runtime's queue depth)."""
    candidates = running.control.runtimes.candidates(
        model.id, model_weight_formats=model.weight_formats
    )
    return candidates[0].runtime_id


def test_every_actor_serves_its_own_endpoint_and_registers(
    on_ray: tuple[RunningServer, RayRuntimes], ray_client: ModelRunnerClient
) -> None:
    _, group = on_ray
    described = group.describe()
    runtimes = {r.runtime_id: r for r in ray_client.server_info().runtimes}
    assert sorted(runtimes) == ["ray-cpu-0", "ray-cpu-1", "ray-gpu-0"]
    assert len({d["pid"] for d in described}) == 3
    for d in described:
        registered = runtimes[d["runtime_id"]]
        assert registered.flight_uri == d["flight_uri"]
        assert registered.available
        # each actor publishes its own metrics, on a port of its own
        assert registered.metrics_uri == d["metrics_uri"] != ""
    assert len({r.metrics_uri for r in runtimes.values()}) == 3


def test_a_models_frames_go_to_the_runtime_that_has_it_warm(
    on_ray: tuple[RunningServer, RayRuntimes],
    ray_client: ModelRunnerClient,
    model: types.ModelInfo,
) -> None:
    running, _ = on_ray
    warm = _loaded(ray_client, model.id)
    assert _route(running, model) == warm
    for _ in range(5):
        np.testing.assert_array_equal(ray_client.predict(model.id, FRAME)["output"], FRAME)
    # nobody else loaded it: the frames went to the warm runtime
    assert _warm_on(ray_client, model.id) == {warm}


def test_load_spreads_to_an_idle_runtime_when_the_warm_one_is_busy(
    on_ray: tuple[RunningServer, RayRuntimes],
    ray_client: ModelRunnerClient,
    model: types.ModelInfo,
) -> None:
    running, _ = on_ray
    first = _loaded(ray_client, model.id)
    # the warm runtime once its heartbeat shows it idle (a busy machine may report the last
    # test's queue a heartbeat late, and a busy warm runtime spreads)
    _wait_until(lambda: _route(running, model) == first, timeout=10 * HEARTBEAT_S)
    release = threading.Event()

    def held() -> Iterator[np.ndarray]:
        yield FRAME
        release.wait(60)

    # a stream held open keeps the warm runtime at queue depth 1 (spread_queue_depth)
    with ModelRunnerClient(running.address, timeout=60) as busy:
        stream = busy.predict_stream(model.id, held())
        next(iter(stream))
        try:
            _wait_until(lambda: _route(running, model) != first, timeout=10 * HEARTBEAT_S)
            assert _route(running, model) != first  # `second`: where the next client goes
            # the second client's stream stays open while the heartbeats tell where the model is
            # warm: a spread copy idle for idle_unload_s goes again, and on a busy machine a
            # heartbeat may come later than that
            done = threading.Event()

            def two_then_held() -> Iterator[np.ndarray]:
                yield FRAME
                yield FRAME
                done.wait(60)

            with ModelRunnerClient(running.address, timeout=60) as other:
                answers = iter(other.predict_stream(model.id, two_then_held()))
                outputs = [next(answers), next(answers)]
                try:
                    # warm on the first and on another one (the route said which; with
                    # heartbeats late on a busy machine the stream may take another idle one)
                    _wait_until(lambda: _spread_beyond(ray_client, model.id, first), 60)
                finally:
                    done.set()
            assert len(outputs) == 2
        finally:
            release.set()
            stream.close()
    # the spread copies go again once nobody uses them (idle_unload_s=4)
    _wait_until(lambda: not _warm_on(ray_client, model.id), timeout=20)


def test_a_runtime_killed_mid_stream_loses_no_answered_frame_and_comes_back(
    on_ray: tuple[RunningServer, RayRuntimes],
    ray_client: ModelRunnerClient,
    model: types.ModelInfo,
) -> None:
    running, group = on_ray
    victim_id = _loaded(ray_client, model.id)
    victim = next(r for r in group.runtimes if r.runtime_id == victim_id)
    old = next(d for d in group.describe() if d["runtime_id"] == victim_id)

    def frames() -> Iterator[np.ndarray]:
        for i in range(100_000):
            yield FRAME + i
            time.sleep(0.002)

    answered: list[np.ndarray] = []
    caught: list[errors.ModelRunnerError] = []
    streaming = ModelRunnerClient(running.address, timeout=60)
    try:
        for outputs in streaming.predict_stream(model.id, frames()):
            answered.append(outputs["output"])
            if len(answered) == 20:
                ray.kill(victim.handle, no_restart=False)
    except errors.ModelRunnerError as e:
        caught.append(e)
    try:
        assert len(caught) == 1 and isinstance(caught[0], errors.UnavailableError), caught
        # every frame the client was told is answered came back, in order and right: the
        # caller knows exactly which frames to send again
        assert caught[0].frames_answered == len(answered) >= 20
        for i, outputs in enumerate(answered):
            np.testing.assert_array_equal(outputs, FRAME + i)
        # within a heartbeat or so the dead process is out of routing; Ray restarts the actor,
        # which registers its new process under the same id at a new address
        _wait_until(lambda: victim_id in group.dropped, timeout=4 * HEARTBEAT_S)
        _wait_until(
            lambda: any(
                r.runtime_id == victim_id and r.flight_uri != old["flight_uri"]
                for r in ray_client.server_info().runtimes
            ),
            timeout=60,
        )
        new = next(d for d in group.describe() if d["runtime_id"] == victim_id)
        assert new["pid"] != old["pid"]
        # the client that lost its stream forgot the route: its next call goes to a live one
        np.testing.assert_array_equal(streaming.predict(model.id, FRAME)["output"], FRAME)
    finally:
        streaming.close()


def test_a_saturated_service_adds_a_runtime_and_stops_it_when_idle(
    on_ray: tuple[RunningServer, RayRuntimes],
    ray_client: ModelRunnerClient,
    model: types.ModelInfo,
) -> None:
    running, group = on_ray
    release = threading.Event()

    def held() -> Iterator[np.ndarray]:
        yield FRAME
        release.wait(60)

    def registered() -> set[str]:
        return {r.runtime_id for r in ray_client.server_info().runtimes if r.available}

    clients = [ModelRunnerClient(running.address, timeout=60) for _ in range(3)]
    streams = []
    try:
        # one stream on each runtime, each runtime saturated: the scaling starts a fourth, a
        # "GPU" one like the service's first. Each stream opens once the heartbeats show the
        # one before on its runtime (else two may go where the route pointed before)
        for i, c in enumerate(clients):
            target = _route(running, model)
            streams.append(c.predict_stream(model.id, held()))
            next(iter(streams[-1]))
            if i < len(clients) - 1:
                _wait_until(lambda t=target: _route(running, model) != t, 10 * HEARTBEAT_S)
        # a new actor imports the frameworks on a busy machine before it registers: generous
        _wait_until(lambda: "ray-gpu-1" in registered(), timeout=180)
        assert group.added == ["ray-gpu-1"]
    finally:
        release.set()
        for stream in streams:
            stream.close()
        for c in clients:
            c.close()
    # nothing routed to it and no model warm for idle_unload_s: it goes again
    _wait_until(lambda: not group.added and "ray-gpu-1" not in registered(), timeout=30)
    assert {r.runtime_id for r in group.runtimes} == {"ray-cpu-0", "ray-cpu-1", "ray-gpu-0"}


def test_a_cluster_without_token_mode_is_joined_with_it_off(ray_cluster: Cluster) -> None:
    """Every test here ran on such a join, from a shell with token mode on (the fixture)."""
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert choose_ray_auth(ray_cluster.address) == RayAuthChoice("disabled")


def test_an_address_where_no_cluster_answers_is_a_clear_error_at_once() -> None:
    """Ray itself retries such an address for minutes; `serve --ray` says so in a second."""
    from modelrunner.cluster.ray_serving import _reachable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # bound, never listening: refused
        for address in (f"127.0.0.1:{closed}", f"ray://127.0.0.1:{closed}", "nohost:port"):
            with pytest.raises(errors.UnavailableError, match="no Ray cluster answers"):
                _reachable(address, timeout=2)
