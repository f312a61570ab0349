"""modelrunner as a bioimageio.core backend: ``bioimageio.core.predict`` with
``create_prediction_pipeline(...)`` gives what bioimageio.core gives in process for the same
call, with processing on the server and with only the network there."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from bioimageio.core import Sample, create_prediction_pipeline, predict, predict_many
from bioimageio.core.digest_spec import get_test_input_sample
from bioimageio.spec.model import v0_5

import modelrunner.client
from modelrunner.client import InvalidArgumentError, ModelRunnerClient
from modelrunner.client import create_prediction_pipeline as remote_pipeline
from modelrunner.runtime_flight.weight_formats import core_devices
from modelrunner.serving import RunningServer
from tests.reference import descr
from tests.zoo import MULTI, NUCLEI, needs_zoo

MODES = ("remote", "local")


def _inputs(package: Path) -> dict[str, np.ndarray]:
    sample = get_test_input_sample(descr(package))
    return {str(m): t.data.to_numpy() for m, t in sample.members.items()}


def _arrays(sample: Sample, model: v0_5.ModelDescr) -> dict[str, np.ndarray]:
    """Outputs in each output's axis order, whatever order the tensors hold."""
    order = {str(t.id): [a.id for a in t.axes] for t in model.outputs}
    return {str(m): t.data.transpose(*order[str(m)]).to_numpy() for m, t in sample.members.items()}


def _in_process(package: Path, weight_format: str | None, **call: Any) -> dict[str, np.ndarray]:
    """``bioimageio.core.predict`` in process: of the description itself (bioimageio.core's
    defaults), or with a pipeline of the given weights."""
    model = descr(package)
    if weight_format is None:
        return _arrays(predict(model=model, **call), model)
    pipeline = create_prediction_pipeline(
        model, devices=core_devices(weight_format, "cpu"), weights_format=weight_format
    )
    return _arrays(predict(model=pipeline, **call), model)


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].shape == want[name].shape, name
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.fixture(scope="module")
def remote(server: RunningServer) -> Iterator[Callable[..., Any]]:
    """Pipelines on the session's server, sharing one client, closed at the end."""
    made = []
    with ModelRunnerClient(server.address, timeout=120) as client:

        def make(package: Path, processing: str, weight_format: str, **kwargs: object):
            pipeline = remote_pipeline(
                package if not isinstance(package, Path) else descr(package),
                server=client,
                processing=processing,  # type: ignore[arg-type]
                weight_format=weight_format,
                device="cpu",
                **kwargs,  # type: ignore[arg-type]
            )
            made.append(pipeline)
            return pipeline

        yield make
        for pipeline in made:
            pipeline.close()


TINY_CASES = [
    ("onnx", "onnx"),
    ("torchscript", "torchscript"),
    ("pytorch_state_dict", "pytorch_state_dict"),
    ("halo", "pytorch_state_dict"),  # halo padding, sample statistics, reflect padding
    ("two_inputs", "pytorch_state_dict"),
]


@pytest.mark.parametrize(("name", "weight_format"), TINY_CASES)
def test_predict_matches_bioimageio_core_for_tiny_models(
    tiny: Callable[[str], Path], remote: Callable[..., Any], name: str, weight_format: str
) -> None:
    package = tiny(name)
    inputs = _inputs(package)
    want = _in_process(package, weight_format, inputs=inputs)
    for processing in MODES:
        pipeline = remote(package, processing, weight_format)
        got = _arrays(predict(model=pipeline, inputs=inputs), descr(package))  # type: ignore[arg-type]
        _assert_same(got, want)


@needs_zoo
@pytest.mark.parametrize("package", [NUCLEI, MULTI], ids=["nuclei", "multi"])
def test_predict_matches_bioimageio_core_for_zoo_models(
    remote: Callable[..., Any], package: Path
) -> None:
    """Same call, same defaults: bioimageio.core's choice of weights (TorchScript for both),
    and the nuclei model's fixed 512x512 input padded by its halo of 32 to 576x576, which the
    server must run at that shape as bioimageio.core does."""
    inputs = _inputs(package)
    want = _in_process(package, None, inputs=inputs)
    for processing in MODES:
        pipeline = remote(package, processing, None)
        got = _arrays(predict(model=pipeline, inputs=inputs), descr(package))
        _assert_same(got, want)


@pytest.mark.slow
@needs_zoo
def test_a_padded_shape_the_network_refuses_is_tiled_on_the_server(
    remote: Callable[..., Any],
) -> None:
    """The nuclei model's ONNX network takes 512x512 only: bioimageio.core's predict() fails
    in process on the 576x576 it pads to; the server tiles that sample instead."""
    image = _inputs(NUCLEI)["raw"]
    with pytest.raises(Exception, match="576"):
        _in_process(NUCLEI, "onnx", inputs=image)
    whole = _in_process(NUCLEI, None, inputs=image)["probability"]
    for processing in MODES:
        pipeline = remote(NUCLEI, processing, "onnx")
        got = _arrays(predict(model=pipeline, inputs=image), descr(NUCLEI))["probability"]
        assert got.shape == whole.shape
        # tiles see less context than the whole 576x576 sample
        assert float(np.abs(got - whole).mean()) < 0.01


def test_blockwise_prediction_matches_bioimageio_core(
    tiny: Callable[[str], Path], remote: Callable[..., Any]
) -> None:
    """``blocksize_parameter``: bioimageio.core's blockwise prediction (halo, reflect padding,
    sample statistics over the whole sample), on the server or block by block."""
    package = tiny("halo")
    image = np.random.default_rng(3).random((1, 1, 96, 112), dtype=np.float32)
    want = _in_process(package, "pytorch_state_dict", inputs=image, blocksize_parameter=1)
    for processing in MODES:
        pipeline = remote(package, processing, "pytorch_state_dict")
        sample = predict(model=pipeline, inputs=image, blocksize_parameter=1)  # type: ignore[arg-type]
        _assert_same(_arrays(sample, descr(package)), want)


def test_fixed_block_shapes_match_bioimageio_core(
    tiny: Callable[[str], Path], remote: Callable[..., Any]
) -> None:
    """``input_block_shape``: blocks cut here (processing here), each block's network on the
    server, in both modes."""
    package = tiny("halo")
    image = np.random.default_rng(4).random((1, 1, 96, 112), dtype=np.float32)
    blocks = {"raw": {"batch": 1, "channel": 1, "y": 64, "x": 48}}
    want = _in_process(package, "pytorch_state_dict", inputs=image, input_block_shape=blocks)
    for processing in MODES:
        pipeline = remote(package, processing, "pytorch_state_dict")
        sample = predict(model=pipeline, inputs=image, input_block_shape=blocks)
        _assert_same(_arrays(sample, descr(package)), want)


@pytest.mark.slow
@needs_zoo
def test_blockwise_prediction_of_the_nuclei_model_matches_bioimageio_core(
    remote: Callable[..., Any],
) -> None:
    image = _inputs(NUCLEI)["raw"]
    want = _in_process(NUCLEI, "onnx", inputs=image, blocksize_parameter=2)
    for processing in MODES:
        pipeline = remote(NUCLEI, processing, "onnx")
        sample = predict(model=pipeline, inputs=image, blocksize_parameter=2)  # type: ignore[arg-type]
        _assert_same(_arrays(sample, descr(NUCLEI)), want)


def test_predict_many_and_the_pipeline_lifecycle(
    tiny: Callable[[str], Path], remote: Callable[..., Any]
) -> None:
    package = tiny("torchscript")
    model = descr(package)
    rng = np.random.default_rng(0)
    images = [rng.random((1, 1, 24, 32), dtype=np.float32) for _ in range(3)]
    want = [_in_process(package, "torchscript", inputs=x) for x in images]
    for processing in MODES:
        pipeline = remote(package, processing, "torchscript")
        got = [_arrays(s, model) for s in predict_many(model=pipeline, inputs=images)]  # type: ignore[arg-type]
        for g, w in zip(got, want, strict=True):
            _assert_same(g, w)
        # predict() left the pipeline unloaded, as bioimageio.core's own pipeline
        with pytest.raises(RuntimeError, match="load"):
            pipeline.predict_sample_without_blocking(
                _sample(model, images[0]), skip_input_padding=True
            )
        with pipeline as loaded:
            out = loaded.predict_sample_without_blocking(_sample(model, images[0]))
            _assert_same(_arrays(out, model), want[0])
            blocked = loaded.predict_sample_with_blocking(_sample(model, images[0]), ns=1)
            assert blocked.members["out"].tagged_shape == out.members["out"].tagged_shape


def _sample(model: v0_5.ModelDescr, image: np.ndarray) -> Sample:
    from bioimageio.core.digest_spec import create_sample_for_model

    return create_sample_for_model(model, inputs={"raw": image}, sample_id="s")


def test_the_model_is_added_once_and_the_pipeline_is_a_core_pipeline(
    tiny: Callable[[str], Path], client: ModelRunnerClient, remote: Callable[..., Any]
) -> None:
    from bioimageio.core import PredictionPipeline

    pipeline = remote(tiny("onnx"), "remote", "onnx")
    assert isinstance(pipeline, PredictionPipeline)
    assert pipeline.model_id == pipeline.model_id  # type: ignore[attr-defined]
    assert pipeline.model_id in {m.id for m in client.list_models()}  # type: ignore[attr-defined]
    assert "create_prediction_pipeline" in modelrunner.client.__all__


def test_a_source_path_works_as_the_model(
    tiny: Callable[[str], Path], server: RunningServer
) -> None:
    package = tiny("onnx")
    inputs = _inputs(package)
    pipeline = remote_pipeline(str(package), server=server.address)
    try:
        got = _arrays(predict(model=pipeline, inputs=inputs), descr(package))
    finally:
        pipeline.close()
    _assert_same(got, _in_process(package, "onnx", inputs=inputs))


def test_unknown_processing_is_refused(tiny: Callable[[str], Path], server: RunningServer) -> None:
    with pytest.raises(InvalidArgumentError, match="processing must be"):
        remote_pipeline(tiny("onnx"), server=server.address, processing="elsewhere")  # type: ignore[arg-type]


def test_dataset_statistics_with_remote_processing_are_refused(
    tiny: Callable[[str], Path], server: RunningServer
) -> None:
    with pytest.raises(InvalidArgumentError, match="processing='local'"):
        remote_pipeline(
            tiny("onnx"), server=server.address, keep_updating_initial_dataset_statistics=True
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["tensorflow_saved_model_bundle", "keras_v3", "keras_hdf5"])
def test_predict_matches_bioimageio_core_with_tensorflow(
    tiny: Callable[[str], Path], remote: Callable[..., Any], name: str, in_tmp_dir: Path
) -> None:
    package = tiny(name)
    inputs = _inputs(package)
    want = _in_process(package, name, inputs=inputs)
    for processing in MODES:
        got = _arrays(
            predict(model=remote(package, processing, name), inputs=inputs), descr(package)
        )
        _assert_same(got, want)


@pytest.mark.slow
def test_predict_matches_bioimageio_core_for_the_careamics_model(
    n2v_package: Path, remote: Callable[..., Any]
) -> None:
    inputs = _inputs(n2v_package)
    want = _in_process(n2v_package, None, inputs=inputs)
    for processing in MODES:
        pipeline = remote(n2v_package, processing, None)
        _assert_same(_arrays(predict(model=pipeline, inputs=inputs), descr(n2v_package)), want)


def test_a_description_read_from_a_zip_is_sent_as_a_package(
    tiny: Callable[[str], Path], remote: Callable[..., Any], tmp_path: Path
) -> None:
    """Its root is no folder the client could add: the package is written and uploaded."""
    from bioimageio.spec import load_model_description

    from tests.tiny_models import _zip_folder

    package = tiny("torchscript")
    zipped = load_model_description(_zip_folder(package, tmp_path / "tiny.zip"))
    inputs = _inputs(package)
    pipeline = remote(zipped, "remote", "torchscript")
    got = _arrays(predict(model=pipeline, inputs=inputs), descr(package))
    _assert_same(got, _in_process(package, "torchscript", inputs=inputs))


def test_a_model_of_the_wrong_kind_is_refused(server: RunningServer) -> None:
    """Attack: something that is neither a description nor a source."""
    with pytest.raises(InvalidArgumentError, match="model must be"):
        remote_pipeline(42, server=server.address)  # type: ignore[arg-type]
