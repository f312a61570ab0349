"""The shortcut for calls whose processing is a no-op gives bioimageio.core's results bit for
bit, and steps aside whenever the pipeline has real work to do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from bioimageio.core import Sample, Tensor

from modelrunner.runtime_flight.direct_forward import direct_forward_for
from tests.reference import Pipelines, descr
from tests.zoo import NUCLEI

Tiny = Callable[[str], Path]


def _pipeline_result(pipelines: Pipelines, package: Path, fmt: str, x: np.ndarray) -> dict:
    model = descr(package)
    pipeline = pipelines.get(package, fmt)
    t = model.inputs[0]
    sample = Sample(members={t.id: Tensor(x, dims=[a.id for a in t.axes])}, stat={}, id=None)
    out = pipeline.predict_sample_without_blocking(
        sample, skip_input_padding=True, skip_output_cropping=True
    )
    return {str(k): v.data.to_numpy() for k, v in out.members.items()}


@pytest.mark.parametrize(("name", "fmt"), [("onnx", "onnx"), ("torchscript", "torchscript")])
def test_same_results_as_the_pipeline(
    tiny: Tiny, pipelines: Pipelines, name: str, fmt: str
) -> None:
    package = tiny(name)
    direct = direct_forward_for(pipelines.get(package, fmt))
    assert direct is not None
    x = np.random.default_rng(0).random((1, 1, 40, 32), dtype=np.float32)
    input_id = str(descr(package).inputs[0].id)
    assert direct.accepts({input_id: x})
    ours = direct.forward({input_id: x})
    expected = _pipeline_result(pipelines, package, fmt, x)
    assert ours.keys() == expected.keys()
    for k in ours:
        assert ours[k].dtype == expected[k].dtype
        np.testing.assert_array_equal(ours[k], expected[k])


def test_inputs_that_need_a_cast_take_the_pipeline(tiny: Tiny, pipelines: Pipelines) -> None:
    direct = direct_forward_for(pipelines.get(tiny("onnx"), "onnx"))
    assert direct is not None
    assert not direct.accepts({"input": np.zeros((1, 1, 8, 8), np.uint8)})
    assert not direct.accepts({"other": np.zeros((1, 1, 8, 8), np.float32)})


def test_models_with_real_processing_take_the_pipeline(pipelines: Pipelines) -> None:
    assert direct_forward_for(pipelines.get(NUCLEI, "onnx")) is None
