"""Arrays of any size: a prediction whose input and output are each larger than the 2 GiB that
Arrow Flight allows in one record batch travels in chunks and comes back whole."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from modelrunner.client import ModelRunnerClient
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings

Tiny = Callable[[str], Path]
GiB = 1024**3


@pytest.fixture(scope="module")
def roomy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """A server that predicts big images in one pass (the default would tile them)."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path_factory.mktemp("roomy-cache"),
        max_tile_input_bytes=16 * GiB,
        grace_period_s=0.5,
    )
    with start_embedded(settings) as running:
        yield running


@pytest.mark.slow
def test_a_prediction_over_two_gibibytes_round_trips(
    roomy_server: RunningServer, tiny: Tiny
) -> None:
    side = 23_800  # float32: 2.11 GiB per array
    image = np.empty((1, 1, side, side), np.float32)
    # distinct values per row and column, cheap to make and to check
    image[0, 0] = (
        np.arange(side, dtype=np.float32)[:, None] + np.arange(side, dtype=np.float32) * 1e-5
    )
    assert image.nbytes > 2 * GiB
    with ModelRunnerClient(roomy_server.address, timeout=None) as client:
        model_id = client.add_model(tiny("onnx")).id
        out = client.predict(model_id, image)["output"]
    assert out.shape == image.shape and out.dtype == np.float32
    for row in (0, 1, side // 2, side - 1):
        np.testing.assert_array_equal(out[0, 0, row], image[0, 0, row])
    np.testing.assert_array_equal(out[0, 0, :, side - 1], image[0, 0, :, side - 1])
