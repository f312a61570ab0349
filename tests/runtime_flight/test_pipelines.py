"""The pool of warm pipelines: loading once, the memory budget, lending, statistics."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bioimageio.core import PredictionPipeline
from bioimageio.spec.model import v0_5

from modelrunner.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    ModelInUseError,
    ModelNotFoundError,
    ResourceExhaustedError,
)
from modelrunner.runtime_flight import devices
from modelrunner.runtime_flight.descriptions import weights_bytes
from modelrunner.runtime_flight.pipelines import PipelinePool, create_pipeline
from modelrunner.settings import Settings
from tests.reference import descr
from tests.runtime_flight.predicting import predict, predict_batch
from tests.tiny_models import build_onnx_identity

Tiny = Callable[[str], Path]


@pytest.fixture(scope="module")
def identities(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three packages of the same tiny ONNX model, as three model ids."""
    root = tmp_path_factory.mktemp("identities")
    return {name: build_onnx_identity(root / name, name=f"identity-{name}") for name in "abc"}


@pytest.fixture(scope="module")
def footprint(identities: dict[str, Path]) -> int:
    return weights_bytes(descr(identities["a"]), "onnx")


class CountingFactory:
    """create_pipeline, counting calls, optionally slow or failing."""

    def __init__(self, delay: float = 0.0, error: Exception | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.error = error
        self.lock = threading.Lock()

    def __call__(self, model: v0_5.ModelDescr, fmt: str, device: str) -> PredictionPipeline:
        with self.lock:
            self.calls += 1
        time.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return create_pipeline(model, fmt, device)


def make_pool(packages: dict[str, Path], **kw: Any) -> PipelinePool:
    def package_dir(model_id: str) -> Path:
        return packages[model_id]

    kw.setdefault("default_device", "cpu")
    return PipelinePool(package_dir, **kw)


def test_load_chooses_the_format_and_device_and_keeps_the_pipeline(
    identities: dict[str, Path], footprint: int
) -> None:
    pool = make_pool(identities)
    info = pool.load("a")
    assert info.model.model_id == "a"
    assert info.model.weight_format == "onnx"
    assert info.model.device == "cpu"
    assert info.model.memory_bytes == footprint > 0
    assert info.model.requests == 0
    assert info.load_seconds > 0
    again = pool.load("a", "onnx", "cpu")
    assert pool.loads == 1
    assert again.load_seconds < info.load_seconds
    assert [m.model_id for m in pool.loaded()] == ["a"]
    assert pool.memory_used_bytes == footprint
    pool.close()
    assert pool.loaded() == ()


def test_predictions_count_as_requests(identities: dict[str, Path]) -> None:
    pool = make_pool(identities)
    with pool.use("a") as warm:
        before = warm.last_used_at
        out = predict(warm, np.ones((5, 6), "float32"))
        np.testing.assert_array_equal(out["output"], np.ones((1, 1, 5, 6)))
        predict_batch(warm, [np.ones((5, 6), "float32")] * 3)
    (info,) = pool.loaded()
    assert info.requests == 2
    assert info.last_used_at is not None and info.last_used_at >= before
    pool.close()


def test_an_unknown_model_is_not_found(identities: dict[str, Path]) -> None:
    pool = make_pool(identities)
    with pytest.raises(ModelNotFoundError) as info:
        pool.load("nope")
    assert str(info.value) == "model nope not found: 'nope'"


def test_a_folder_without_a_description_is_not_found(tmp_path: Path) -> None:
    pool = make_pool({"empty": tmp_path})
    with pytest.raises(ModelNotFoundError) as info:
        pool.load("empty")
    assert str(info.value) == (
        f"no model package for empty: {tmp_path} holds no bioimageio.yaml or rdf.yaml"
    )


def test_requests_for_what_the_model_or_runtime_lacks(
    identities: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(devices, "cuda_device_count", lambda: 0)
    pool = make_pool(identities)
    with pytest.raises(
        InvalidArgumentError, match="the model has no torchscript weights; its weight formats: onnx"
    ):
        pool.load("a", "torchscript")
    with pytest.raises(InvalidArgumentError, match="device 'cuda' is not available"):
        pool.load("a", device="cuda")
    assert pool.loads == 0


def test_least_recently_used_idle_pipelines_make_room(
    identities: dict[str, Path], footprint: int
) -> None:
    pool = make_pool(identities, memory_budget_bytes=int(2.5 * footprint))
    pool.load("a")
    pool.load("b")
    with pool.use("a"):
        pass  # a is now more recently used than b
    pool.load("c")
    assert sorted(m.model_id for m in pool.loaded()) == ["a", "c"]
    assert pool.memory_used_bytes <= pool.memory_budget_bytes
    pool.load("b")
    assert sorted(m.model_id for m in pool.loaded()) == ["b", "c"]
    assert pool.loads == 4
    pool.close()


def test_pipelines_in_use_are_not_evicted(identities: dict[str, Path], footprint: int) -> None:
    pool = make_pool(identities, memory_budget_bytes=int(2.5 * footprint))
    with pool.use("a"), pool.use("b"):
        with pytest.raises(ResourceExhaustedError) as info:
            pool.load("c")
        assert str(info.value).endswith(
            "is taken by pipelines in use: a (onnx, cpu), b (onnx, cpu)"
        )
    pool.load("c")
    assert len(pool.loaded()) == 2
    pool.close()


def test_a_model_larger_than_the_budget(identities: dict[str, Path], footprint: int) -> None:
    pool = make_pool(identities, memory_budget_bytes=footprint - 1)
    with pytest.raises(ResourceExhaustedError) as info:
        pool.load("a")
    assert "more than the runtime's memory budget" in str(info.value)
    assert pool.loads == 0


def test_concurrent_requests_load_once(identities: dict[str, Path]) -> None:
    factory = CountingFactory(delay=0.5)
    pool = make_pool(identities, factory=factory)
    start = threading.Barrier(3)
    got: list[Any] = []

    def request() -> None:
        start.wait()
        with pool.use("a") as warm:
            got.append(warm)

    threads = [threading.Thread(target=request) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert factory.calls == 1
    assert len(got) == 3 and got[0] is got[1] is got[2]
    pool.close()


def test_a_failed_load_fails_every_waiting_request_and_is_retried_later(
    identities: dict[str, Path],
) -> None:
    factory = CountingFactory(delay=0.3, error=RuntimeError("broken weights"))
    pool = make_pool(identities, factory=factory)
    start = threading.Barrier(2)
    errors: list[BaseException] = []

    def request() -> None:
        start.wait()
        try:
            pool.load("a")
        except FailedPreconditionError as e:
            errors.append(e)

    threads = [threading.Thread(target=request) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert factory.calls == 1
    assert [type(e) for e in errors] == [FailedPreconditionError, FailedPreconditionError]
    assert str(errors[0]) == "cannot load onnx weights of a on cpu: RuntimeError: broken weights"
    factory.error = None
    pool.load("a")
    assert factory.calls == 2
    pool.close()


def test_one_inference_at_a_time_per_pipeline(identities: dict[str, Path]) -> None:
    pool = make_pool(identities)
    running = 0
    most = 0
    guard = threading.Lock()
    with pool.use("a") as warm:
        adapter: Any = warm.pipeline._adapter
        original = adapter._forward_impl

        # the framework call itself: both the pipeline and the direct shortcut come through here
        def slow_forward(device: Any, model: Any, arrays: Any) -> Any:
            nonlocal running, most
            with guard:
                running += 1
                most = max(most, running)
            time.sleep(0.05)
            with guard:
                running -= 1
            return original(device, model, arrays)

        adapter._forward_impl = slow_forward

        def request() -> None:
            with pool.use("a") as lent:
                predict(lent, np.ones((4, 4), "float32"))

        threads = [threading.Thread(target=request) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
    assert most == 1
    assert pool.loaded()[0].requests == 4
    pool.close()


def test_unload(identities: dict[str, Path]) -> None:
    pool = make_pool(identities)
    pool.load("a")
    pool.load("b")
    assert pool.unload("a") == 1
    assert pool.unload("a") == 0
    assert [m.model_id for m in pool.loaded()] == ["b"]
    assert pool.unload("b", "torchscript") == 0
    assert pool.unload("b", "onnx", "cpu") == 1
    assert pool.loaded() == ()


def test_unloading_a_model_in_use(identities: dict[str, Path]) -> None:
    pool = make_pool(identities)
    with pool.use("a") as warm:
        with pytest.raises(ModelInUseError) as info:
            pool.unload("a")
        assert str(info.value) == "model a is in use on cpu"
        assert pool.unload("a", force=True) == 1
        assert pool.loaded() == ()
        assert warm.retired and warm.users == 1
        predict(warm, np.ones((4, 4), "float32"))  # still usable until released
    assert warm.retired and warm.users == 0


def test_from_settings() -> None:
    settings = Settings(runtime_memory_budget_bytes=123456, device="cpu")
    pool = PipelinePool.from_settings(settings, lambda model_id: Path(model_id))
    assert pool.memory_budget_bytes == 123456
    assert pool.default_device == "cpu"
