"""A large tiled prediction through the real client: the runtime streams the output back band by
band, and the client gets what bioimageio.core's blockwise prediction computes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor, create_prediction_pipeline

from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.runtime_flight.service import StreamedOutputs
from modelrunner.serving import RunningServer
from modelrunner.types import Progress
from tests.reference import descr
from tests.zoo import NUCLEI, needs_zoo

Tiny = Callable[[str], Path]


@pytest.fixture
def streaming(server: RunningServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Stream every tiled prediction, in small record batches; yields the kinds of outputs the
    service returned (``streamed`` or ``whole``)."""
    assert server.runtime is not None
    flight_server = server.runtime.server
    service = flight_server.service
    monkeypatch.setattr(service.settings, "stream_tiles_min_bytes", 0)
    monkeypatch.setattr(flight_server, "batch_bytes", 256 * 1024)
    kinds: list[str] = []
    predict = service.predict

    def spy(*args: Any, **kwargs: Any) -> Any:
        outputs = predict(*args, **kwargs)
        kinds.append("streamed" if isinstance(outputs, StreamedOutputs) else "whole")
        return outputs

    monkeypatch.setattr(service, "predict", spy)
    yield kinds


def _core_tiled(package: Path, image: np.ndarray, **kwargs: Any) -> np.ndarray:
    model = descr(package)
    with create_prediction_pipeline(model, devices=["cpu"]) as pipeline:
        sample = Sample(
            members={model.inputs[0].id: Tensor(image, dims=[a.id for a in model.inputs[0].axes])},
            stat={},
            id=None,
        )
        out = pipeline.predict_sample_with_blocking(sample, **kwargs)
    (tensor,) = out.members.values()
    return tensor.data.to_numpy()


@needs_zoo
def test_nuclei_streams_a_large_image_back_like_bioimageio_core(
    client: ModelRunnerClient, nuclei: ModelInfo, streaming: list[str]
) -> None:
    image = np.random.default_rng(0).random((1500, 1300), dtype=np.float32)
    events: list[Progress] = []
    out = client.predict(nuclei.id, image, weight_format="onnx", progress=events.append)
    assert streaming == ["streamed"]
    probability = out["probability"]
    assert probability.shape == (1, 1, 1500, 1300) and probability.dtype == np.float32
    expected = _core_tiled(NUCLEI, image[None, None])
    np.testing.assert_allclose(probability, expected, atol=1e-5)
    blocks = [(e.done, e.total) for e in events if e.stage == "predict"]
    assert blocks == [(done, 12) for done in range(1, 13)]
    downloads = [e for e in events if e.stage == "download"]
    assert len(downloads) > 1 and downloads[-1].done == downloads[-1].total


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
def test_the_halo_model_streams_like_bioimageio_core_tiles(
    client: ModelRunnerClient, tiny: Tiny, streaming: list[str], dtype: str
) -> None:
    package = tiny("halo")
    info = client.add_model(package)
    image = (np.random.default_rng(1).random((1, 1, 300, 260)) * 1000).astype(dtype)
    out = client.predict(info.id, image, blocksize=2)
    assert streaming == ["streamed"]
    expected = _core_tiled(package, image, ns=2)
    np.testing.assert_allclose(out["out"], expected, rtol=1e-5, atol=1e-5)
