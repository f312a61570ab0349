"""bioimageio.core run in-process, the reference every prediction is compared with."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor, create_prediction_pipeline
from bioimageio.core.digest_spec import get_test_input_sample
from bioimageio.spec.model import v0_5

from modelrunner.runtime_flight.descriptions import load_description
from modelrunner.runtime_flight.pipelines import create_pipeline
from modelrunner.runtime_flight.weight_formats import core_devices, model_formats


class Pipelines:
    """Loaded pipelines shared by the tests of a session, by (package, weight format)."""

    def __init__(self) -> None:
        self._pipelines: dict[tuple[Path, str], PredictionPipeline] = {}

    def get(self, package: Path, weight_format: str) -> PredictionPipeline:
        key = (package, weight_format)
        if key not in self._pipelines:
            self._pipelines[key] = create_pipeline(descr(package), weight_format, "cpu")
        return self._pipelines[key]


def descr(package: Path) -> v0_5.ModelDescr:
    return load_description(package)


def sample_inputs(package: Path) -> dict[str, np.ndarray]:
    sample = get_test_input_sample(descr(package))
    return {str(m): t.data.to_numpy() for m, t in sample.members.items()}


def core_prediction(
    package: Path, inputs: dict[str, np.ndarray], weight_format: str | None = None
) -> dict[str, np.ndarray]:
    """What bioimageio.core computes with a fresh pipeline, the way its model test runs."""
    model = descr(package)
    fmt = weight_format or model_formats(model)[0]
    pipeline = create_prediction_pipeline(
        model, devices=core_devices(fmt, "cpu"), weights_format=fmt
    )
    try:
        sample = Sample(
            members={
                t.id: Tensor(inputs[str(t.id)], dims=[a.id for a in t.axes]) for t in model.inputs
            },
            stat={},
            id=None,
        )
        out = pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
    finally:
        pipeline.unload()
    return {str(m): t.data.to_numpy() for m, t in out.members.items()}
