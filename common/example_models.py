"""Example models this project makes itself: real bioimage.io packages (``bioimageio.spec`` 0.5)
of small U-Nets that segment nuclei, trained in seconds on a CPU on synthetic images
(``modelrunner.synthetic_nuclei``), so a first try, the examples and the tests need no
download and no folder from outside the repository.

Kinds (:data:`KINDS`): ``nuclei``, a 2-D network for YX images, and ``nuclei3d``, a 3-D one
for ZYX stacks. Each package holds ``pytorch_state_dict`` weights (architecture
``example_networks.py``), the same weights as TorchScript, a test input drawn like the training
images and the test output ``bioimageio.core`` computes from it, a cover and a README;
``bioimageio.core``'s model test passes on it. The input takes any intensity scale (the
preprocessing normalises each image); the output ``probability`` is the probability of
nucleus (float32, 0 to 1), the input's size, not labels (``examples/probabilities_to_labels.py``
makes labels of it).

Needs torch and bioimageio.core (the ``runtime`` extra)::

    from modelrunner.example_models import write_example_model
    made = write_example_model("nuclei", Path("models/nuclei"))
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from modelrunner import errors
from modelrunner.example_kinds import KINDS, ExampleKind
from modelrunner.example_training import StepCallback, train
from modelrunner.synthetic_nuclei import camera_counts, draw_nuclei


@dataclass(frozen=True)
class ExampleModel:
    """A written example package and how its training went."""

    directory: Path
    kind: str
    seed: int
    steps: int
    train_seconds: float
    final_loss: float
    test_iou: float
    """Intersection over union of the test output above 0.5 with the drawn nuclei."""


def write_example_model(
    kind: str, directory: Path, *, seed: int = 0, on_step: StepCallback | None = None
) -> ExampleModel:
    """Train the ``kind`` network and write its package into ``directory`` (which must not
    exist, or be empty). The package is written beside it and renamed into place when
    complete: a failure leaves nothing that looks like a package."""
    example = KINDS.get(kind)
    if example is None:
        raise errors.InvalidArgumentError(
            f"no example model {kind!r}: choose one of {', '.join(KINDS)}",
            details={"kind": kind},
        )
    directory = Path(directory)
    if directory.exists() and (not directory.is_dir() or any(directory.iterdir())):
        raise errors.InvalidArgumentError(
            f"{directory} exists and is not an empty folder: name a new one",
            details={"path": str(directory)},
        )
    _require_frameworks()
    started = time.perf_counter()
    trained = train(example.plan, seed, on_step)
    seconds = time.perf_counter() - started
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = directory.parent / f".{directory.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        with tempfile.TemporaryDirectory() as files:
            descr, truth = _description(example, trained.network, seed, Path(files))
            output = _write_test_output(descr, Path(files))
            iou = _iou(output, truth)
            made = ExampleModel(
                directory, kind, seed, example.plan.steps, seconds, trained.final_loss, iou
            )
            _write_readme_and_cover(descr, made, example, Path(files))
            from bioimageio.spec import save_bioimageio_package_as_folder

            save_bioimageio_package_as_folder(descr, output_path=staging)
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        os.replace(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return made


def holds_example(directory: Path, kind: str) -> bool:
    """Whether ``directory`` holds a package ``write_example_model`` wrote for ``kind``."""
    description = Path(directory) / "rdf.yaml"
    if kind not in KINDS or not description.is_file():
        return False
    first_lines = description.read_text(errors="replace").splitlines()[:4]
    return f"name: {KINDS[kind].title}" in first_lines


def _require_frameworks() -> None:
    missing = [
        name
        for name in ("torch", "bioimageio.core")
        if not _importable(name)  # before minutes of work, not after
    ]
    if missing:
        raise errors.FailedPreconditionError(
            f"making an example model needs {' and '.join(missing)}: "
            "pip install -e '.[runtime]' (or pip install torch bioimageio.core)",
            details={"missing": ", ".join(missing)},
        )


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _description(
    example: ExampleKind, network: Any, seed: int, files: Path
) -> tuple[Any, np.ndarray]:
    """The description, with a placeholder test output, and the drawn test input's truth."""
    from bioimageio.spec.model import v0_5

    import modelrunner.example_networks as networks

    drawn = draw_nuclei(example.test_shape, np.random.default_rng(seed + 1))
    test_input = camera_counts(drawn.image).astype(np.float32)[None, None]
    np.save(files / "test_input.npy", test_input)
    tifffile.imwrite(files / "sample_input.tif", test_input[0, 0].astype(np.uint16))
    np.save(files / "test_output.npy", np.full(test_input.shape, 0.5, np.float32))  # placeholder
    architecture = files / "example_networks.py"
    shutil.copyfile(networks.__file__, architecture)
    state_dict, torchscript = _write_weights(network, files)
    torch_version = v0_5.Version(_torch_version())

    def space_in(axis: str) -> Any:
        # y and x: multiples of 2**depth (the poolings); z is never pooled
        size = (
            v0_5.ParameterizedSize(min=1, step=1)
            if axis == "z"
            else v0_5.ParameterizedSize(min=32, step=16)
        )
        return v0_5.SpaceInputAxis(id=v0_5.AxisId(axis), size=size)

    def space_out(axis: str) -> Any:
        size = v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=v0_5.AxisId(axis))
        if axis == "z":
            return v0_5.SpaceOutputAxis(id=v0_5.AxisId(axis), size=size)
        return v0_5.SpaceOutputAxisWithHalo(id=v0_5.AxisId(axis), size=size, halo=example.halo)

    spatial = [v0_5.AxisId(a) for a in example.axes]
    float32 = v0_5.EnsureDtypeDescr(kwargs=v0_5.EnsureDtypeKwargs(dtype="float32"))
    descr = v0_5.ModelDescr(
        name=example.title,
        description=(
            f"A small {example.plan.dims}-D U-Net that segments fluorescent nuclei, trained by "
            "modelrunner in seconds on synthetic images: an example to try modelrunner with, "
            "not a model for real data."
        ),
        authors=[v0_5.Author(name="modelrunner developers")],
        cite=[
            v0_5.CiteEntry(
                text="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical "
                "Image Segmentation. MICCAI 2015.",
                doi=v0_5.Doi("10.1007/978-3-319-24574-4_28"),
            )
        ],
        license=v0_5.LicenseId("MIT"),
        tags=["nuclei", "segmentation", f"unet{example.plan.dims}d", "example", "synthetic"],
        inputs=[
            v0_5.InputTensorDescr(
                id=v0_5.TensorId("raw"),
                description="fluorescence of stained nuclei, any intensity scale",
                axes=[
                    v0_5.BatchAxis(),
                    v0_5.ChannelAxis(channel_names=[v0_5.Identifier("nuclei")]),
                    *(space_in(a) for a in example.axes),
                ],
                test_tensor=v0_5.FileDescr(source=files / "test_input.npy"),
                sample_tensor=v0_5.FileDescr(source=files / "sample_input.tif"),
                preprocessing=[
                    float32,
                    v0_5.ZeroMeanUnitVarianceDescr(
                        kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=spatial)
                    ),
                ],
            )
        ],
        outputs=[
            v0_5.OutputTensorDescr(
                id=v0_5.TensorId("probability"),
                description="probability of nucleus, 0 to 1",
                axes=[
                    v0_5.BatchAxis(),
                    v0_5.ChannelAxis(channel_names=[v0_5.Identifier("probability")]),
                    *(space_out(a) for a in example.axes),
                ],
                test_tensor=v0_5.FileDescr(source=files / "test_output.npy"),
                data=v0_5.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
                postprocessing=[v0_5.SigmoidDescr(), float32],
            )
        ],
        weights=v0_5.WeightsDescr(
            pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
                source=state_dict,
                architecture=v0_5.ArchitectureFromFileDescr(
                    source=architecture,
                    callable=v0_5.Identifier("UNet"),
                    kwargs=example.plan.network_kwargs,
                ),
                pytorch_version=torch_version,
            ),
            torchscript=v0_5.TorchscriptWeightsDescr(
                source=torchscript,
                pytorch_version=torch_version,
                parent="pytorch_state_dict",
                comment="torch.jit.script of the pytorch_state_dict weights' network",
            ),
        ),
    )
    return descr, drawn.labels > 0


def _torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def _write_weights(network: Any, files: Path) -> tuple[Path, Path]:
    import torch

    state_dict = files / "weights.pt"
    torch.save(network.state_dict(), state_dict)
    torchscript = files / "weights_torchscript.pt"
    with warnings.catch_warnings():
        # torch 2.11 deprecates TorchScript in favour of torch.export, but bioimage.io's
        # torchscript weight format is TorchScript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(network), str(torchscript))
    return state_dict, torchscript


def _write_test_output(descr: Any, files: Path) -> np.ndarray:
    """What bioimageio.core predicts for the test input with these weights becomes the test
    output, so the package reproduces it by construction. Returns it without batch and
    channel."""
    from bioimageio.core import create_prediction_pipeline
    from bioimageio.core.digest_spec import get_test_input_sample
    from bioimageio.spec.model import v0_5

    pipeline = create_prediction_pipeline(descr, devices=["cpu"])
    try:
        # as bioimageio.core's model test predicts it
        result = pipeline.predict_sample_without_blocking(
            get_test_input_sample(descr), skip_input_padding=True, skip_output_cropping=True
        )
    finally:
        pipeline.unload()
    out = descr.outputs[0]
    array = result.members[out.id].data.transpose(*[a.id for a in out.axes]).to_numpy()
    path = files / "test_output.npy"
    np.save(path, array.astype(np.float32))
    out.test_tensor = v0_5.FileDescr(source=path)
    tifffile.imwrite(files / "sample_output.tif", array[0, 0].astype(np.float32))
    out.sample_tensor = v0_5.FileDescr(source=files / "sample_output.tif")
    return np.asarray(array[0, 0])


def _iou(probability: np.ndarray, truth: np.ndarray) -> float:
    found = probability > 0.5
    union = np.logical_or(found, truth).sum()
    return float(np.logical_and(found, truth).sum() / union) if union else 1.0


def _write_readme_and_cover(
    descr: Any, made: ExampleModel, example: ExampleKind, files: Path
) -> None:
    from bioimageio.spec.model import v0_5
    from PIL import Image

    readme = files / "README.md"
    plan = example.plan
    patch = "x".join(map(str, plan.patch))
    # nothing that varies from run to run (such as the training time): the same seed gives
    # the same weights, test output and README
    readme.write_text(
        f"# {example.title}\n\n"
        f"{descr.description}\n\n"
        "## Training\n\n"
        f"Written by `modelrunner example-model {example.name}` (seed {made.seed}): a U-Net "
        f"({plan.depth} poolings, {plan.base} features at full resolution) trained on the CPU "
        f"for {plan.steps} steps of {plan.batch} synthetic images of {patch} pixels (nuclei as "
        "textured ellipses on an uneven background, blurred, with shot and read noise); final "
        f"loss {made.final_loss:.3f} (binary cross-entropy plus Dice).\n\n"
        "## Validation\n\n"
        "On its test input, drawn like the training images, the probability above 0.5 covers "
        f"the true nuclei with an intersection over union of {made.test_iou:.2f}. It was never "
        "checked on real microscopy and is not meant for it.\n\n"
        "## Use\n\n"
        "Input `raw`: any intensity scale (each image is normalised to zero mean and unit "
        "variance). Output `probability`: the probability of nucleus per pixel, not labels: "
        "threshold it and label its connected components for instances.\n"
    )
    test_in = np.load(files / "test_input.npy")[0, 0]
    test_out = np.load(files / "test_output.npy")[0, 0]
    if test_in.ndim == 3:  # the middle plane of a stack
        test_in, test_out = test_in[len(test_in) // 2], test_out[len(test_out) // 2]
    low, high = np.percentile(test_in, (1, 99.8))
    left = np.clip((test_in - low) / max(high - low, 1e-6), 0, 1)
    cover = (np.concatenate([left, test_out], axis=1) * 255).astype(np.uint8)
    Image.fromarray(cover).save(files / "cover.png")
    descr.documentation = v0_5.FileDescr(source=readme)
    descr.covers = [v0_5.FileDescr(source=files / "cover.png")]
