"""Placement by model affinity (``entry_server/runtimes/placement.py``): warm runtimes first, the least
busy of them first; a model whose warm runtimes are all saturated goes to an idle one next."""

from __future__ import annotations

from pathlib import Path

from modelrunner.entry_server.runtimes.directory import RuntimeDirectory
from modelrunner.entry_server.runtimes.placement import placement_order
from modelrunner.settings import Settings
from modelrunner.types import LoadedModel, RuntimeInfo

MODEL = "m" * 64


def _runtime(name: str, *, warm: bool, depth: int, others: int = 0) -> RuntimeInfo:
    loaded = [
        LoadedModel(model_id=f"other{i}", weight_format="onnx", device="cpu") for i in range(others)
    ]
    if warm:
        loaded.append(LoadedModel(model_id=MODEL, weight_format="onnx", device="cpu"))
    return RuntimeInfo(
        runtime_id=name,
        flight_uri=f"grpc://{name}:1",
        loaded_models=tuple(loaded),
        queue_depth=depth,
    )


def _order(*runtimes: RuntimeInfo, spread: int = 4) -> list[str]:
    warm = lambda r: any(m.model_id == MODEL for m in r.loaded_models)  # noqa: E731
    return [r.runtime_id for r in placement_order(runtimes, warm, spread_queue_depth=spread)]


def test_the_warm_runtime_comes_first_while_it_keeps_up() -> None:
    assert _order(_runtime("cold", warm=False, depth=0), _runtime("warm", warm=True, depth=3)) == [
        "warm",
        "cold",
    ]


def test_the_least_busy_warm_runtime_comes_first() -> None:
    assert _order(_runtime("a", warm=True, depth=2), _runtime("b", warm=True, depth=1))[0] == "b"


def test_a_saturated_model_spreads_to_an_idle_runtime() -> None:
    order = _order(
        _runtime("warm", warm=True, depth=4),
        _runtime("busy-cold", warm=False, depth=5),
        _runtime("fuller", warm=False, depth=0, others=2),
        _runtime("idle", warm=False, depth=0),
    )
    assert order == ["idle", "warm", "fuller", "busy-cold"]


def test_no_spreading_when_every_other_runtime_is_saturated_too() -> None:
    assert _order(_runtime("warm", warm=True, depth=9), _runtime("cold", warm=False, depth=4)) == [
        "warm",
        "cold",
    ]


def test_without_a_warm_runtime_the_least_loaded_comes_first() -> None:
    assert _order(
        _runtime("two", warm=False, depth=0, others=2),
        _runtime("one", warm=False, depth=0, others=1),
    ) == ["one", "two"]


def test_a_burst_of_routes_spreads_before_the_next_heartbeat(tmp_path: Path) -> None:
    directory = RuntimeDirectory(
        Settings(cache_dir=tmp_path, runtime_wait_s=0, spread_queue_depth=1)
    )
    for name in ("a", "b"):
        directory.register(_runtime(name, warm=True, depth=0))

    def best() -> str:
        return directory.candidates(MODEL, model_weight_formats=["onnx"])[0].runtime_id

    assert best() == "a"
    directory.note_routed("a")  # a client was sent there: it counts until a heartbeat
    assert best() == "b"
    directory.register(_runtime("a", warm=True, depth=0))  # the heartbeat's real depth
    assert best() == "a"
