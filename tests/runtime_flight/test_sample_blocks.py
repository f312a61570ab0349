"""Block mode (``PredictCommand.block_of_sample``): a block predicted as sent, normalised with the
statistics of the whole sample that the request gives, and the requests it refuses: statistics
missing, malformed or not fitting the sample, models whose processing needs more than sample
statistics of an input, and block mode where it has no meaning (streams, blocksize)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.spec.model import v0_5

from modelrunner.client import ModelInfo
from modelrunner.errors import FailedPreconditionError, InvalidArgumentError
from modelrunner.predict_command import from_command
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.types import SampleStatistic
from modelrunner.v1 import runtime_pb2
from tests.reference import Pipelines
from tests.runtime_flight.predicting import predict, request
from tests.tiny_models import build_processing_model

Tiny = Callable[[str], Path]
NETWORK_ONLY = {"keep_shape": True, "skip_preprocessing": True, "skip_postprocessing": True}
CYX = ("channel", "y", "x")


def _statistic(name: str, value: float, **fields: object) -> SampleStatistic:
    return SampleStatistic.model_validate(
        {"tensor_id": "raw", "name": name, "axes": CYX, "values": (value,), **fields}
    )


def test_a_block_is_normalised_with_the_statistics_given_not_its_own(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """The halo model's zero-mean-unit-variance over (channel, y, x) with the given mean and
    std: the network sees (block - mean) / (std + eps), whatever the block's own statistics."""
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    block = np.random.default_rng(0).random((1, 1, 48, 64), dtype=np.float32) * 10
    given = (_statistic("mean", 3.0), _statistic("std", 2.5))
    ours = predict(pipeline, {"raw": block}, block_statistics=given)
    normalised = ((block - 3.0) / (2.5 + 1e-6)).astype(np.float32)
    network = predict(pipeline, {"raw": normalised}, **NETWORK_ONLY)
    np.testing.assert_allclose(ours["out"], network["out"], rtol=1e-5, atol=1e-5)
    assert ours["out"].shape == (1, 1, 48, 64)  # as sent: the halo is the caller's to crop


def test_a_missing_statistic_is_refused(tiny: Tiny, pipelines: Pipelines) -> None:
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    block = np.zeros((1, 1, 48, 48), np.float32)
    given = (_statistic("mean", 0.0),)
    with pytest.raises(FailedPreconditionError) as raised:
        predict(pipeline, {"raw": block}, block_statistics=given)
    assert raised.value.message == (
        "the model's processing needs the std of 'raw' over axes channel, y, x of the whole "
        "sample, which the request does not give"
    )


def test_statistics_that_do_not_fit_the_sample_are_refused(
    tiny: Tiny, pipelines: Pipelines
) -> None:
    """Attack: three values along the sample's batch axis of 1, and values along an axis the
    statistic reduces."""
    pipeline = pipelines.get(tiny("halo"), "pytorch_state_dict")
    block = np.zeros((1, 1, 48, 48), np.float32)
    std = _statistic("std", 1.0)
    three = _statistic("mean", 0.0, dims=("batch",), shape=(3,), values=(1.0, 2.0, 3.0))
    with pytest.raises(InvalidArgumentError) as raised:
        predict(pipeline, {"raw": block}, block_statistics=(three, std))
    assert raised.value.message == (
        "sample statistic mean of 'raw': axis batch has 3 values, the sample has 1"
    )
    inside = _statistic("mean", 0.0, dims=("y",), shape=(1,))
    with pytest.raises(InvalidArgumentError) as raised:
        predict(pipeline, {"raw": block}, block_statistics=(inside, std))
    assert raised.value.message == (
        "sample statistic mean of 'raw': its dims ['y'] are not among the axes it keeps (['batch'])"
    )


def test_malformed_statistics_on_the_wire_are_refused() -> None:
    """Attack: hand-made commands whose statistics do not hold together."""

    def options(statistic: runtime_pb2.SampleStatistic) -> PredictRequest:
        command = runtime_pb2.PredictCommand(model_id="m")
        command.block_of_sample.statistics.append(statistic)
        return from_command(command)

    with pytest.raises(InvalidArgumentError) as raised:
        options(runtime_pb2.SampleStatistic(tensor_id="raw", name="median"))
    assert raised.value.message == (
        "unknown sample statistic 'median': one of mean, var, std, quantile"
    )
    with pytest.raises(InvalidArgumentError) as raised:
        options(
            runtime_pb2.SampleStatistic(
                tensor_id="raw", name="mean", dims=["channel"], shape=[2], values=[1.0]
            )
        )
    assert raised.value.message == (
        "sample statistic mean of 'raw': 1 values for dims ['channel'] of shape [2]"
    )
    with pytest.raises(InvalidArgumentError):
        options(
            runtime_pb2.SampleStatistic(
                tensor_id="raw", name="mean", dims=["a", "b"], shape=[-1, -1], values=[1.0]
            )
        )
    with pytest.raises(InvalidArgumentError) as raised:
        options(runtime_pb2.SampleStatistic(tensor_id="raw", name="quantile", method="nearest"))
    assert raised.value.message == "unknown quantile method 'nearest': linear or inverted_cdf"
    # no statistics at all is block mode too (a model that needs none)
    command = runtime_pb2.PredictCommand(model_id="m")
    command.block_of_sample.SetInParent()
    assert from_command(command).block_statistics == ()
    assert from_command(runtime_pb2.PredictCommand(model_id="m")).block_statistics is None


def test_a_model_normalised_with_dataset_statistics_is_refused(
    pipelines: Pipelines, tmp_path: Path
) -> None:
    """zero_mean_unit_variance without axes is bioimageio.core's dataset statistics: statistics
    of one sample do not stand for them."""
    package = build_processing_model(
        tmp_path / "dataset",
        channels=1,
        preprocessing=[v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs())],
    )
    pipeline = pipelines.get(package, "onnx")
    with pytest.raises(FailedPreconditionError) as raised:
        predict(
            pipeline,
            {"input": np.zeros((1, 1, 16, 16), np.float32)},
            block_statistics=(),
        )
    assert raised.value.message == (
        "the model's processing uses dataset statistics: it cannot be predicted block by block "
        "with statistics of one sample"
    )


def test_block_mode_in_a_stream_or_with_a_blocksize_is_refused(
    runtime: RuntimeFlightServer, identity: ModelInfo
) -> None:
    stream = PredictRequest(model_id=identity.id, block_statistics=())
    frame = {"input": np.zeros((1, 1, 8, 8), np.float32)}
    results = runtime.service.predict_frames(stream, [frame])
    assert isinstance(results[0], InvalidArgumentError)
    assert (
        results[0].message
        == "block_of_sample is for single predictions and sessions, not frame streams"
    )
    with pytest.raises(InvalidArgumentError) as raised:
        request(block_statistics=(), blocksize=1)
    assert raised.value.details == {"option": "blocksize"}
