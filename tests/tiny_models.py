"""Tiny bioimage.io model packages, built from ``bioimageio.spec`` classes inside the test session.

Every builder writes one unpacked package (``rdf.yaml`` plus its files) into ``directory`` and
returns that directory. The packages are deterministic (fixed weights, seeded test inputs), take
well under a second to build (TensorFlow and Keras: a few seconds, for the framework import) and
need no network. Each one passes ``bioimageio.core.test_model``: its test outputs are computed by
bioimageio.core itself from the test inputs, with the weights just written.

Shared by the test suites and the benchmarks, e.g.::

    from tests.tiny_models import build_onnx_identity
    package = build_onnx_identity(tmp_path / "identity", min_size=64, step=64)
"""

from __future__ import annotations

import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
from bioimageio.spec import save_bioimageio_package_as_folder
from bioimageio.spec.model import v0_5

TINY_NET_SOURCE = '''"""Architectures of the tiny test models (bioimage.io ``ArchitectureFromFileDescr``)."""

import torch


class TinyConvNet(torch.nn.Module):
    """One convolution with 'same' zero padding."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, kernel_size: int = 3):
        super().__init__()
        self.conv = torch.nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class TwoInputNet(torch.nn.Module):
    """Two inputs of the same shape in, their weighted sum and difference out."""

    def __init__(self):
        super().__init__()
        self.mix = torch.nn.Conv2d(2, 2, 1)

    def forward(self, a: torch.Tensor, b: torch.Tensor):
        mixed = self.mix(torch.cat([a, b], dim=1))
        return mixed[:, :1], mixed[:, 1:]


class TinyFlowNet(torch.nn.Module):
    """Cellpose-style output: flow_y, flow_x (image gradients, pointing to bright centres) and
    cell probability (the intensity minus a threshold)."""

    def __init__(self, threshold: float = 0.5):
        super().__init__()
        self.threshold = threshold
        self.grad = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flows = self.grad(x)
        norm = torch.sqrt((flows**2).sum(dim=1, keepdim=True)) + 1e-3
        return torch.cat([flows / norm, x - self.threshold], dim=1)
'''

AUTHOR = v0_5.Author(name="modelrunner tests")
CITE = v0_5.CiteEntry(text="modelrunner test model", url=v0_5.HttpUrl("https://example.com"))

SizeSpec = int | tuple[int, int]
"""A fixed axis size, or ``(min, step)`` of a parameterized one."""


def _size(spec: SizeSpec) -> int | v0_5.ParameterizedSize:
    if isinstance(spec, int):
        return spec
    return v0_5.ParameterizedSize(min=spec[0], step=spec[1])


def _test_size(spec: SizeSpec, n: int = 1) -> int:
    return spec if isinstance(spec, int) else spec[0] + n * spec[1]


def _channel(names: Sequence[str]) -> v0_5.ChannelAxis:
    return v0_5.ChannelAxis(channel_names=[v0_5.Identifier(n) for n in names])


def _input(
    tensor_id: str,
    test_file: Path,
    *,
    size: SizeSpec,
    channels: Sequence[str] = ("c0",),
    channel_last: bool = False,
    y_size: int | v0_5.ParameterizedSize | v0_5.SizeReference | None = None,
    x_size: int | v0_5.ParameterizedSize | v0_5.SizeReference | None = None,
    preprocessing: Sequence[Any] = (),
    pad: v0_5.Padding | None = None,
) -> v0_5.InputTensorDescr:
    y = v0_5.SpaceInputAxis(id=v0_5.AxisId("y"), size=y_size or _size(size))
    x = v0_5.SpaceInputAxis(id=v0_5.AxisId("x"), size=x_size or _size(size))
    channel = _channel(channels)
    axes: list[Any] = (
        [v0_5.BatchAxis(), y, x, channel] if channel_last else [v0_5.BatchAxis(), channel, y, x]
    )
    return v0_5.InputTensorDescr(
        id=v0_5.TensorId(tensor_id),
        axes=axes,
        test_tensor=v0_5.FileDescr(source=test_file),
        preprocessing=list(preprocessing),
        pad=pad,
    )


def _output(
    tensor_id: str,
    test_file: Path,
    *,
    reference: str,
    channels: Sequence[str] = ("c0",),
    channel_last: bool = False,
    halo: int = 0,
    dtype: Literal["float32", "uint16"] = "float32",
    postprocessing: Sequence[Any] = (),
    fixed_size: int | None = None,
) -> v0_5.OutputTensorDescr:
    def space(axis_id: str) -> Any:
        if fixed_size is not None:
            return v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis_id), size=fixed_size)
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId(reference), axis_id=v0_5.AxisId(axis_id))
        if halo:
            return v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(axis_id), size=size, halo=halo)
        return v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis_id), size=size)

    channel = _channel(channels)
    axes: list[Any] = (
        [v0_5.BatchAxis(), space("y"), space("x"), channel]
        if channel_last
        else [v0_5.BatchAxis(), channel, space("y"), space("x")]
    )
    return v0_5.OutputTensorDescr(
        id=v0_5.TensorId(tensor_id),
        axes=axes,
        test_tensor=v0_5.FileDescr(source=test_file),
        data=v0_5.IntervalOrRatioDataDescr(type=dtype),
        postprocessing=list(postprocessing),
    )


def _model(
    name: str,
    inputs: list[v0_5.InputTensorDescr],
    outputs: list[v0_5.OutputTensorDescr],
    weights: v0_5.WeightsDescr,
) -> v0_5.ModelDescr:
    return v0_5.ModelDescr(
        name=name,
        description=f"{name}: a tiny model built by the modelrunner tests",
        authors=[AUTHOR],
        cite=[CITE],
        license=v0_5.LicenseId("MIT"),
        inputs=inputs,
        outputs=outputs,
        weights=weights,
    )


def _finish(descr: v0_5.ModelDescr, staging: Path, directory: Path) -> Path:
    """Compute the test outputs with bioimageio.core from the test inputs, then write the package.

    The first description carries placeholder ones as test outputs; the real ones are whatever
    bioimageio.core predicts with these weights, so the package reproduces them by construction.
    """
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample

    sample = get_test_input_sample(descr)
    pipeline = create_prediction_pipeline(descr, devices=["cpu"])
    try:
        result = pipeline.predict_sample_without_blocking(
            sample, skip_input_padding=True, skip_output_cropping=True
        )
    finally:
        pipeline.unload()
    for out in descr.outputs:
        assert out.test_tensor is not None
        tensor = result.members[out.id]
        array = tensor.data.transpose(*[a.id for a in out.axes]).to_numpy()
        path = staging / f"test_output_{out.id}.npy"
        np.save(path, array)
        out.test_tensor = v0_5.FileDescr(source=path)
    directory.mkdir(parents=True, exist_ok=True)
    save_bioimageio_package_as_folder(descr, output_path=directory)
    return directory


def _placeholder(staging: Path, tensor_id: str, shape: tuple[int, ...], dtype: str) -> Path:
    path = staging / f"test_output_{tensor_id}.npy"
    np.save(path, np.ones(shape, dtype=dtype))
    return path


def _test_input(staging: Path, tensor_id: str, shape: tuple[int, ...], seed: int = 0) -> Path:
    array = np.random.default_rng(seed).standard_normal(shape).astype("float32")
    path = staging / f"test_input_{tensor_id}.npy"
    np.save(path, array)
    return path


def _torch_version() -> v0_5.Version:
    import torch

    return v0_5.Version(torch.__version__.split("+")[0])


def _tiny_conv_net(kernel_size: int, in_channels: int = 1, out_channels: int = 1) -> Any:
    """The TinyConvNet of ``TINY_NET_SOURCE`` with fixed weights."""
    import torch

    namespace: dict[str, Any] = {}
    exec(compile(TINY_NET_SOURCE, "tiny_net.py", "exec"), namespace)
    net = namespace["TinyConvNet"](in_channels, out_channels, kernel_size)
    with torch.no_grad():
        weights = torch.arange(net.conv.weight.numel(), dtype=torch.float32)
        net.conv.weight.copy_((weights / weights.sum()).reshape(net.conv.weight.shape))
        net.conv.bias.fill_(0.25)
    return net.eval()


def _write_state_dict(net: Any, staging: Path) -> Path:
    import torch

    path = staging / "weights.pt"
    torch.save(net.state_dict(), path)
    return path


def _write_architecture(staging: Path) -> Path:
    path = staging / "tiny_net.py"
    path.write_text(TINY_NET_SOURCE)
    return path


def _state_dict_weights(
    staging: Path, net: Any, callable_name: str, kwargs: dict[str, Any]
) -> v0_5.WeightsDescr:
    return v0_5.WeightsDescr(
        pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=_write_state_dict(net, staging),
            architecture=v0_5.ArchitectureFromFileDescr(
                source=_write_architecture(staging),
                callable=v0_5.Identifier(callable_name),
                kwargs=kwargs,
            ),
            pytorch_version=_torch_version(),
        )
    )


def _build_conv(
    directory: Path,
    *,
    name: str,
    weights_format: Literal["pytorch_state_dict", "torchscript"],
    size: SizeSpec,
    kernel_size: int = 3,
    halo: int = 0,
    preprocessing: Sequence[Any] = (),
    pad: v0_5.Padding | None = None,
) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        side = _test_size(size)
        net = _tiny_conv_net(kernel_size)
        if weights_format == "pytorch_state_dict":
            weights = _state_dict_weights(staging, net, "TinyConvNet", {"kernel_size": kernel_size})
        else:
            weights = v0_5.WeightsDescr(
                torchscript=v0_5.TorchscriptWeightsDescr(
                    source=_write_torchscript(net, staging), pytorch_version=_torch_version()
                )
            )
        descr = _model(
            name,
            [
                _input(
                    "raw",
                    _test_input(staging, "raw", (1, 1, side, side)),
                    size=size,
                    preprocessing=preprocessing,
                    pad=pad,
                )
            ],
            [
                _output(
                    "out",
                    _placeholder(staging, "out", (1, 1, side, side), "float32"),
                    reference="raw",
                    halo=halo,
                )
            ],
            weights,
        )
        return _finish(descr, staging, directory)


def _write_torchscript(net: Any, staging: Path) -> Path:
    import torch

    path = staging / "weights_torchscript.pt"
    with warnings.catch_warnings():
        # torch 2.11 deprecates TorchScript in favour of torch.export, but bioimage.io's
        # torchscript format is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(net, torch.zeros(1, 1, 16, 16))
        torch.jit.save(traced, str(path))
    return path


def build_pytorch_state_dict(directory: Path) -> Path:
    """``pytorch_state_dict`` weights, the architecture from a ``.py`` file in the package; a 3x3
    convolution on BCYX float32, fixed 32x32."""
    return _build_conv(
        directory, name="tiny-pytorch-state-dict", weights_format="pytorch_state_dict", size=32
    )


def build_torchscript(directory: Path) -> Path:
    """``torchscript`` weights: a 3x3 convolution on BCYX float32, y/x sizes 16 + n*8."""
    return _build_conv(
        directory, name="tiny-torchscript", weights_format="torchscript", size=(16, 8)
    )


def build_halo_model(directory: Path) -> Path:
    """A 5x5 convolution with an output halo of 4 on y/x, sizes 32 + n*16, sample-wise
    zero-mean-unit-variance preprocessing and reflect padding."""
    return _build_conv(
        directory,
        name="tiny-halo",
        weights_format="pytorch_state_dict",
        size=(32, 16),
        kernel_size=5,
        halo=4,
        preprocessing=[
            v0_5.ZeroMeanUnitVarianceDescr(
                kwargs=v0_5.ZeroMeanUnitVarianceKwargs(
                    axes=[v0_5.AxisId("channel"), v0_5.AxisId("y"), v0_5.AxisId("x")]
                )
            )
        ],
        # mode given explicitly: bioimageio.spec writes a default-only ReflectPadding as {},
        # which reads back as constant padding
        pad=v0_5.ReflectPadding(mode="reflect"),
    )


def build_halo_model_3d(directory: Path) -> Path:
    """A 3x3x3 convolution (TorchScript) on BCZYX float32 with an output halo of 2 on z, y and
    x; sizes 8 + n*4 (z) and 16 + n*8 (y, x); zero-mean-unit-variance over the whole volume
    (z, y, x) and symmetric padding (bioimageio.core's default)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        net = torch.nn.Conv3d(1, 1, 3, padding=1)
        with torch.no_grad():
            weights = torch.arange(net.weight.numel(), dtype=torch.float32)
            net.weight.copy_((weights / weights.sum()).reshape(net.weight.shape))
            net.bias.fill_(0.25)
        path = staging / "weights_torchscript.pt"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see _write_torchscript
            torch.jit.save(torch.jit.trace(net.eval(), torch.zeros(1, 1, 8, 16, 16)), str(path))
        sizes = {"z": (8, 4), "y": (16, 8), "x": (16, 8)}
        shape = (1, 1, *(_test_size(s) for s in sizes.values()))
        space_in = [v0_5.SpaceInputAxis(id=v0_5.AxisId(a), size=_size(s)) for a, s in sizes.items()]
        space_out = [
            v0_5.SpaceOutputAxisWithHalo(
                id=v0_5.AxisId(a),
                size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId(a)),
                halo=2,
            )
            for a in sizes
        ]
        zmuv = v0_5.ZeroMeanUnitVarianceDescr(
            kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[v0_5.AxisId(a) for a in sizes])
        )
        descr = _model(
            "tiny-halo-3d",
            [
                v0_5.InputTensorDescr(
                    id=v0_5.TensorId("raw"),
                    axes=[v0_5.BatchAxis(), _channel(["c0"]), *space_in],
                    test_tensor=v0_5.FileDescr(source=_test_input(staging, "raw", shape)),
                    preprocessing=[zmuv],
                )
            ],
            [
                v0_5.OutputTensorDescr(
                    id=v0_5.TensorId("out"),
                    axes=[v0_5.BatchAxis(), _channel(["c0"]), *space_out],
                    test_tensor=v0_5.FileDescr(
                        source=_placeholder(staging, "out", shape, "float32")
                    ),
                )
            ],
            v0_5.WeightsDescr(
                torchscript=v0_5.TorchscriptWeightsDescr(
                    source=path, pytorch_version=_torch_version()
                )
            ),
        )
        return _finish(descr, staging, directory)


def build_parameterized_model(directory: Path) -> Path:
    """A 3x3 convolution whose y/x sizes are 20 + n*12 (so most sizes need padding)."""
    return _build_conv(
        directory, name="tiny-parameterized", weights_format="pytorch_state_dict", size=(20, 12)
    )


def build_two_input_model(directory: Path) -> Path:
    """Inputs ``a`` (y/x 16 + n*8) and ``b`` (y/x follow ``a``: size references); outputs ``first``
    and ``second`` (1x1 convolutions of both, sized like ``a``)."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        namespace: dict[str, Any] = {}
        exec(compile(TINY_NET_SOURCE, "tiny_net.py", "exec"), namespace)
        net = namespace["TwoInputNet"]()
        with torch.no_grad():
            net.mix.weight.copy_(torch.tensor([[1.0, 0.5], [-0.5, 1.0]]).reshape(2, 2, 1, 1))
            net.mix.bias.copy_(torch.tensor([0.1, -0.1]))
        weights = _state_dict_weights(staging, net.eval(), "TwoInputNet", {})
        side = 24
        ref_y = v0_5.SizeReference(tensor_id=v0_5.TensorId("a"), axis_id=v0_5.AxisId("y"))
        ref_x = v0_5.SizeReference(tensor_id=v0_5.TensorId("a"), axis_id=v0_5.AxisId("x"))
        descr = _model(
            "tiny-two-inputs",
            [
                _input("a", _test_input(staging, "a", (1, 1, side, side), 0), size=(16, 8)),
                _input(
                    "b",
                    _test_input(staging, "b", (1, 1, side, side), 1),
                    size=(16, 8),
                    y_size=ref_y,
                    x_size=ref_x,
                ),
            ],
            [
                _output(
                    "first",
                    _placeholder(staging, "first", (1, 1, side, side), "float32"),
                    reference="a",
                ),
                _output(
                    "second",
                    _placeholder(staging, "second", (1, 1, side, side), "float32"),
                    reference="a",
                ),
            ],
            weights,
        )
        return _finish(descr, staging, directory)


def _blobs(side: int, centres: Sequence[tuple[int, int]], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:side, :side].astype("float32")
    image = np.zeros((side, side), dtype="float32")
    for cy, cx in centres:
        image = np.maximum(image, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius**2)))
    return image


def build_cellpose_model(directory: Path) -> Path:
    """A Cellpose-style model: a tiny torch net whose 3 output channels are flow_y, flow_x and
    cell probability, decoded to uint16 instance labels by ``cellpose_flow_dynamics``
    postprocessing (needs the ``cellpose`` package). y/x sizes 32 + n*16."""
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        namespace: dict[str, Any] = {}
        exec(compile(TINY_NET_SOURCE, "tiny_net.py", "exec"), namespace)
        net = namespace["TinyFlowNet"](threshold=0.5)
        with torch.no_grad():
            sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
            net.grad.weight.copy_(torch.stack([sobel.T, sobel]).reshape(2, 1, 3, 3))
        weights = _state_dict_weights(staging, net.eval(), "TinyFlowNet", {"threshold": 0.5})
        side = 48
        image = _blobs(side, [(12, 12), (12, 34), (34, 22)], radius=4.0)
        test_input = staging / "test_input_raw.npy"
        np.save(test_input, image[None, None])
        descr = _model(
            "tiny-cellpose",
            [_input("raw", test_input, size=(32, 16))],
            [
                _output(
                    "labels",
                    _placeholder(staging, "labels", (1, 1, side, side), "uint16"),
                    reference="raw",
                    channels=("labels",),
                    dtype="uint16",
                    postprocessing=[
                        v0_5.CellposeFlowDynamicsDescr(
                            id="cellpose_flow_dynamics",
                            kwargs=v0_5.CellposeFlowDynamicsKwargs(
                                cellprob_threshold=0.0, flow_threshold=0.0, do_3D=False, min_size=5
                            ),
                        )
                    ],
                )
            ],
            weights,
        )
        return _finish(descr, staging, directory)


def _onnx_identity_weights(staging: Path, channels: int) -> v0_5.WeightsDescr:
    """An ONNX ``Identity`` graph on float32 BCYX with free batch, y and x dimensions."""
    import onnx
    from onnx import TensorProto, helper

    shape = ["batch", channels, "y", "x"]
    graph = helper.make_graph(
        [helper.make_node("Identity", ["input"], ["output"])],
        "identity",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, shape)],
    )
    opset = 17
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    weights_path = staging / "identity.onnx"
    onnx.save(model, str(weights_path))
    return v0_5.WeightsDescr(onnx=v0_5.OnnxWeightsDescr(source=weights_path, opset_version=opset))


def _identity_package(
    directory: Path,
    staging: Path,
    weights: v0_5.WeightsDescr,
    *,
    name: str,
    channels: int,
    size: SizeSpec,
    side: int,
    preprocessing: Sequence[Any] = (),
    postprocessing: Sequence[Any] = (),
) -> Path:
    """A package of an identity network from ``input`` to ``output`` (float32 BCYX)."""
    names = [f"c{i}" for i in range(channels)]
    descr = _model(
        name,
        [
            _input(
                "input",
                _test_input(staging, "input", (1, channels, side, side)),
                size=size,
                channels=names,
                preprocessing=preprocessing,
            )
        ],
        [
            _output(
                "output",
                _placeholder(staging, "output", (1, channels, side, side), "float32"),
                reference="input",
                channels=names,
                postprocessing=postprocessing,
            )
        ],
        weights,
    )
    return _finish(descr, staging, directory)


def build_onnx_identity(
    directory: Path,
    *,
    min_size: int = 1,
    step: int = 1,
    fixed_size: int | None = None,
    channels: int = 1,
    name: str = "tiny-onnx-identity",
    test_size: int | None = None,
) -> Path:
    """An ONNX ``Identity`` model on float32 BCYX. y/x sizes are ``min_size + n*step`` (the
    default, 1 + n*1, takes any size), or exactly ``fixed_size``. The graph itself has free
    batch, y and x dimensions, so the description alone decides which sizes are valid."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        size: SizeSpec = fixed_size if fixed_size is not None else (min_size, step)
        side = test_size or (fixed_size if fixed_size is not None else max(min_size + step, 8))
        return _identity_package(
            directory,
            staging,
            _onnx_identity_weights(staging, channels),
            name=name,
            channels=channels,
            size=size,
            side=side,
        )


def _tf_version() -> v0_5.Version:
    import tensorflow as tf

    return v0_5.Version(tf.__version__)


def _zip_folder(folder: Path, target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as zf:
        for path in sorted(folder.rglob("*")):
            zf.write(path, path.relative_to(folder))
    return target


def build_tensorflow_saved_model(directory: Path) -> Path:
    """``tensorflow_saved_model_bundle`` weights (a zipped TF2 SavedModel computing
    ``2 * x + 1``) on channel-last BYXC float32, y/x sizes 8 + n*8."""
    import tensorflow as tf

    class Affine(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def serve(self, x: Any) -> Any:
            return {"output": 2.0 * x + 1.0}

    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        module = Affine()
        saved = staging / "saved_model"
        tf.saved_model.save(module, str(saved), signatures={"serving_default": module.serve})
        bundle = _zip_folder(saved, staging / "tf_weights.zip")
        descr = _channel_last_image_model(
            "tiny-tensorflow-saved-model",
            staging,
            v0_5.WeightsDescr(
                tensorflow_saved_model_bundle=v0_5.TensorflowSavedModelBundleWeightsDescr(
                    source=bundle, tensorflow_version=_tf_version()
                )
            ),
        )
        with _working_directory(staging):
            return _finish(descr, staging, directory)


@contextmanager
def _working_directory(path: Path) -> Iterator[None]:
    """bioimageio.core unzips TensorFlow weights into ``./bioimageio_unzipped_tf_weights``:
    keep that out of the caller's working directory."""
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


def _keras_conv() -> Any:
    import keras

    model = keras.Sequential(
        [keras.Input((None, None, 1)), keras.layers.Conv2D(1, 3, padding="same")]
    )
    kernel, bias = model.layers[0].get_weights()
    values = np.arange(kernel.size, dtype="float32")
    model.layers[0].set_weights(
        [(values / values.sum()).reshape(kernel.shape), np.full_like(bias, 0.25)]
    )
    return model


def _build_keras(
    directory: Path, name: str, save: Callable[[Any, Path], v0_5.WeightsDescr]
) -> Path:
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        descr = _channel_last_image_model(name, staging, save(_keras_conv(), staging))
        return _finish(descr, staging, directory)


def _channel_last_image_model(
    name: str, staging: Path, weights: v0_5.WeightsDescr
) -> v0_5.ModelDescr:
    """The TensorFlow and Keras models' description: a 16x16 ``byxc`` image in, the same size
    out (sizes 8 + n*8)."""
    side = 16
    return _model(
        name,
        [
            _input(
                "input",
                _test_input(staging, "input", (1, side, side, 1)),
                size=(8, 8),
                channel_last=True,
            )
        ],
        [
            _output(
                "output",
                _placeholder(staging, "output", (1, side, side, 1), "float32"),
                reference="input",
                channel_last=True,
            )
        ],
        weights,
    )


def build_keras_v3(directory: Path) -> Path:
    """``keras_v3`` weights (a ``.keras`` file): a 3x3 convolution on BYXC float32, y/x 8 + n*8."""

    def save(model: Any, staging: Path) -> v0_5.WeightsDescr:
        import keras

        path = staging / "weights.keras"
        model.save(path)
        return v0_5.WeightsDescr(
            keras_v3=v0_5.KerasV3WeightsDescr(
                source=path,
                keras_version=v0_5.Version(keras.__version__),
                backend=(keras.backend.backend(), _backend_version(keras.backend.backend())),
            )
        )

    return _build_keras(directory, "tiny-keras-v3", save)


def build_keras_hdf5(directory: Path) -> Path:
    """``keras_hdf5`` weights (legacy HDF5 file written by Keras 3): a 3x3 convolution on BYXC
    float32, y/x 8 + n*8."""

    def save(model: Any, staging: Path) -> v0_5.WeightsDescr:
        import keras

        path = staging / "weights.h5"
        with warnings.catch_warnings():
            # Keras 3 calls HDF5 "legacy" and warns; it is the format keras_hdf5 describes
            warnings.simplefilter("ignore", UserWarning)
            keras.saving.save_model(model, path)
        return v0_5.WeightsDescr(
            keras_hdf5=v0_5.KerasHdf5WeightsDescr(source=path, tensorflow_version=_tf_version())
        )

    return _build_keras(directory, "tiny-keras-hdf5", save)


def _backend_version(backend: str) -> v0_5.Version:
    if backend == "torch":
        return _torch_version()
    if backend == "tensorflow":
        return _tf_version()
    import jax

    return v0_5.Version(jax.__version__)


def build_fixed_output_model(directory: Path) -> Path:
    """Like CAREamics exports: fixed 32x32 input and an output whose y/x are fixed to 32 too
    (no size reference); a 3x3 convolution, ``pytorch_state_dict``."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        net = _tiny_conv_net(3)
        weights = _state_dict_weights(staging, net, "TinyConvNet", {"kernel_size": 3})
        side = 32
        descr = _model(
            "tiny-fixed-output",
            [_input("raw", _test_input(staging, "raw", (1, 1, side, side)), size=side)],
            [
                _output(
                    "out",
                    _placeholder(staging, "out", (1, 1, side, side), "float32"),
                    reference="raw",
                    fixed_size=side,
                )
            ],
            weights,
        )
        return _finish(descr, staging, directory)


def build_processing_model(
    directory: Path,
    *,
    preprocessing: Sequence[Any] = (),
    postprocessing: Sequence[Any] = (),
    weights_format: Literal["onnx", "torchscript"] = "onnx",
    channels: int = 2,
    name: str = "tiny-processing",
    test_side: int = 24,
) -> Path:
    """A model whose work is its processing: an identity network (ONNX ``Identity``, or a
    TorchScript module returning its input) on float32 BCYX with ``channels`` channels, y/x sizes
    8 + n*8, between the given pre- and postprocessing steps."""
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        if weights_format == "onnx":
            weights = _onnx_identity_weights(staging, channels)
        else:
            import torch

            weights = v0_5.WeightsDescr(
                torchscript=v0_5.TorchscriptWeightsDescr(
                    source=_write_torchscript(torch.nn.Identity(), staging),
                    pytorch_version=_torch_version(),
                )
            )
        return _identity_package(
            directory,
            staging,
            weights,
            name=name,
            channels=channels,
            size=(8, 8),
            side=test_side,
            preprocessing=preprocessing,
            postprocessing=postprocessing,
        )


def build_heavy_processing_model(directory: Path) -> Path:
    """What a typical model does around its network, with a trivial network: percentile
    scaling per channel, clipping, sigmoid."""
    axes = [v0_5.AxisId("y"), v0_5.AxisId("x")]
    return build_processing_model(
        directory,
        name="tiny-heavy-processing",
        channels=1,
        preprocessing=[
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
            v0_5.ScaleRangeDescr(
                kwargs=v0_5.ScaleRangeKwargs(axes=axes, min_percentile=1.0, max_percentile=99.8)
            ),
            v0_5.ClipDescr(kwargs=v0_5.ClipKwargs(min=0.0, max=1.0)),
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        ],
        postprocessing=[
            v0_5.SigmoidDescr(),
            v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32")),
        ],
    )


BUILDERS: dict[str, Callable[[Path], Path]] = {
    "pytorch_state_dict": build_pytorch_state_dict,
    "torchscript": build_torchscript,
    "onnx": build_onnx_identity,
    "halo": build_halo_model,
    "halo_3d": build_halo_model_3d,
    "parameterized": build_parameterized_model,
    "two_inputs": build_two_input_model,
    "fixed_output": build_fixed_output_model,
    "heavy_processing": build_heavy_processing_model,
    "cellpose": build_cellpose_model,
    "tensorflow_saved_model_bundle": build_tensorflow_saved_model,
    "keras_v3": build_keras_v3,
    "keras_hdf5": build_keras_hdf5,
}
"""Every tiny model by a short name."""

HEAVY = frozenset({"cellpose", "tensorflow_saved_model_bundle", "keras_v3", "keras_hdf5"})
"""Builders that import TensorFlow/Keras or Cellpose (seconds, not milliseconds)."""
