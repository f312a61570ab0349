"""The scaling policy (``cluster/ray_scaling.py``) without Ray: add a runtime when every one
has stayed saturated, never past the maximum; remove an added one idle long enough, never the
ones the service started with."""

from __future__ import annotations

from modelrunner.cluster.ray_scaling import LoadScaling
from modelrunner.types import LoadedModel, RuntimeInfo


def _runtime(name: str, depth: int, *, warm: bool = False) -> RuntimeInfo:
    loaded = (LoadedModel(model_id="m", weight_format="onnx", device="cpu"),) if warm else ()
    return RuntimeInfo(
        runtime_id=name, flight_uri=f"grpc://{name}:1", queue_depth=depth, loaded_models=loaded
    )


def _scaling(clock: list[float]) -> LoadScaling:
    return LoadScaling(
        min_runtimes=2, max_runtimes=3, spread_queue_depth=2, idle_s=10, clock=lambda: clock[0]
    )


def test_a_runtime_is_added_only_after_sustained_saturation() -> None:
    policy = _scaling([0.0])
    busy = [_runtime("a", 2), _runtime("b", 3)]
    assert [policy.wants_more(busy, 2) for _ in range(3)] == [False, False, True]
    # one runtime with room resets the count
    policy.wants_more(busy, 2)
    policy.wants_more([_runtime("a", 2), _runtime("b", 1)], 2)
    assert not policy.wants_more(busy, 2)


def test_never_past_the_maximum() -> None:
    policy = _scaling([0.0])
    busy = [_runtime("a", 5), _runtime("b", 5), _runtime("c", 5)]
    assert not any(policy.wants_more(busy, 3) for _ in range(10))


def test_an_added_runtime_goes_after_being_idle_long_enough() -> None:
    clock = [0.0]
    policy = _scaling(clock)
    runtimes = [_runtime("a", 0), _runtime("b", 0), _runtime("c", 0)]
    assert policy.idle_to_remove(runtimes, ["c"]) == []
    clock[0] = 9.0
    assert policy.idle_to_remove(runtimes, ["c"]) == []
    clock[0] = 10.0
    assert policy.idle_to_remove(runtimes, ["c"]) == ["c"]


def test_work_or_a_warm_model_restarts_the_idle_clock() -> None:
    clock = [0.0]
    policy = _scaling(clock)
    policy.idle_to_remove([_runtime("a", 0), _runtime("b", 0), _runtime("c", 0)], ["c"])
    clock[0] = 8.0
    policy.idle_to_remove([_runtime("a", 0), _runtime("b", 0), _runtime("c", 0, warm=True)], ["c"])
    clock[0] = 12.0
    assert (
        policy.idle_to_remove([_runtime("a", 0), _runtime("b", 0), _runtime("c", 0)], ["c"]) == []
    )


def test_the_started_runtimes_always_stay() -> None:
    clock = [0.0]
    policy = _scaling(clock)
    # "b" was added, but only two runtimes are left: the minimum
    policy.idle_to_remove([_runtime("a", 0), _runtime("b", 0)], ["b"])
    clock[0] = 100.0
    assert policy.idle_to_remove([_runtime("a", 0), _runtime("b", 0)], ["b"]) == []
