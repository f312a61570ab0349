"""The bioimageio.core classes behind :func:`modelrunner.client.create_prediction_pipeline`:
a ``RemoteModelAdapter`` whose forward pass runs on the server, and a ``PredictionPipeline``
that sends whole samples to the server when the processing runs there. Imported only when a
pipeline is made, so the client alone needs no bioimageio.core."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from bioimageio.core import PredictionPipeline, Sample, Tensor

# bioimageio.core 0.11 (pinned) keeps its remote-backend base class and the batch-index helper
# its RemoteModelAdapter.forward uses in private modules; the gradio backend imports them so too
from bioimageio.core._model_adapter import RemoteModelAdapter
from bioimageio.core._restore_batch_multi_index import restore_batch_multi_index
from bioimageio.core.common import MemberId, PerMember
from bioimageio.core.digest_spec import get_axes_infos, get_member_id, get_member_ids
from bioimageio.core.proc_setup import setup_pre_and_postprocessing
from bioimageio.core.stat_measures import Measure, MeasureValue
from bioimageio.spec import load_description, save_bioimageio_package
from bioimageio.spec.model import AnyModelDescr, v0_4, v0_5

from modelrunner.errors import InvalidArgumentError

from ._sync import ModelRunnerClient

ProcessingPlace = Literal["remote", "local"]
"""Where the pre- and postprocessing run: on the server, or here (see :mod:`.core_pipeline`)."""


class ServerLink:
    """One model on one server: adds it on first use, then predicts with it."""

    def __init__(
        self,
        client: ModelRunnerClient,
        source: str | Path | AnyModelDescr,
        *,
        owns_client: bool,
        weight_format: str | None,
        device: str | None,
    ) -> None:
        self.client = client
        self.weight_format = weight_format
        self.device = device
        self._source = source
        self._owns_client = owns_client
        self._model_id: str | None = None
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        with self._lock:
            if self._model_id is None:
                self._model_id = self._add()
            return self._model_id

    def _add(self) -> str:
        source = self._source
        if isinstance(source, (str, Path)):
            return self.client.add_model(source).id
        root = source.root
        # the folder it was read from (changes made to the description in memory stay here)
        if isinstance(root, Path) and root.is_dir():
            return self.client.add_model(root).id
        # a description in memory, or read from a zip or URL: send the package as it is here
        with tempfile.TemporaryDirectory(prefix="modelrunner-package-") as tmp:
            package = save_bioimageio_package(source, output_path=Path(tmp) / "package.zip")
            return self.client.add_model(package).id

    def predict(
        self,
        members: Mapping[MemberId, Tensor],
        *,
        skip_preprocessing: bool,
        skip_postprocessing: bool,
        blocksize: int | None = None,
    ) -> dict[str, np.ndarray]:
        # The tensors keep their axis names (xarray dims) on the wire, so any axis order works.
        return self.client.predict(
            self.model_id,
            {str(m): t.data for m, t in members.items()},
            weight_format=self.weight_format,
            device=self.device,
            blocksize=blocksize,
            nan_policy="allow",  # bioimageio.core in process passes NaN on as well
            skip_preprocessing=skip_preprocessing,
            skip_postprocessing=skip_postprocessing,
            keep_shape=True,
        )

    def close(self) -> None:
        if self._owns_client:
            self.client.close()


def _output_tensors(
    descr: AnyModelDescr, arrays: Mapping[str, np.ndarray]
) -> dict[MemberId, Tensor]:
    axes = {get_member_id(t): [a.id for a in get_axes_infos(t)] for t in descr.outputs}
    # copies: bioimageio.core's postprocessing may write into its tensors, and what Flight
    # delivers is read-only
    return {MemberId(k): Tensor(np.array(a), dims=axes[MemberId(k)]) for k, a in arrays.items()}


class ModelRunnerModelAdapter(RemoteModelAdapter[Any]):
    """The network alone, on the server (bioimageio.core's ``RemoteModelAdapter`` role): its
    forward pass sends the (preprocessed) tensors over Flight, unserialized."""

    def __init__(self, model_description: AnyModelDescr, link: ServerLink) -> None:
        self._link = link
        super().__init__(model_description, server=link.client.address, sample_serializer=None)  # type: ignore[arg-type]

    def load(self) -> None:
        # the server loads the model when it first predicts with it, and keeps it warm
        self._loaded = True

    def unload(self) -> None:
        self._loaded = False

    def check_loaded(self) -> None:
        if not self._loaded:
            raise RuntimeError("Model must be `.load()`ed before calling forward()")

    def forward(self, inputs: PerMember[Tensor | None]) -> PerMember[Tensor | None]:
        self.check_loaded()
        present = {m: t for m, t in inputs.items() if t is not None}
        arrays = self._link.predict(present, skip_preprocessing=True, skip_postprocessing=True)
        outputs: PerMember[Tensor | None] = dict(_output_tensors(self._model_descr, arrays))
        return restore_batch_multi_index(inputs, outputs)  # type: ignore[arg-type]

    def _forward_impl(self, serialized_input_sample: Iterable[Any]) -> Iterable[Any]:
        raise NotImplementedError("forward() sends tensors over Flight, unserialized")

    def test(self) -> None:
        """Not a bioimageio.core ``ValidationSummary``: use ``ModelRunnerClient.test``, which
        runs bioimageio.core's model test on the server and returns its report."""
        return None


class ModelRunnerPipeline(PredictionPipeline):
    """A bioimageio.core ``PredictionPipeline`` on a modelrunner server (see
    :mod:`modelrunner.client.core_pipeline`)."""

    def __init__(self, *, processing: ProcessingPlace, link: ServerLink, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.processing: ProcessingPlace = processing
        self._link = link
        self._remote_adapter: ModelRunnerModelAdapter = kwargs["model_adapter"]

    @property
    def server(self) -> str:
        return self._link.client.address

    @property
    def model_id(self) -> str:
        """The model's id on the server (adding it there if this is the first use)."""
        return self._link.model_id

    def close(self) -> None:
        super().close()
        self._link.close()

    def _predict_sample_without_blocking_impl(
        self,
        sample: Sample,
        skip_preprocessing: bool = False,
        skip_postprocessing: bool = False,
        skip_input_padding: bool = False,
        skip_output_cropping: bool = False,
    ) -> Sample:
        if self.processing == "local":
            return super()._predict_sample_without_blocking_impl(
                sample,
                skip_preprocessing,
                skip_postprocessing,
                skip_input_padding,
                skip_output_cropping,
            )
        self._remote_adapter.check_loaded()
        # padded here, as bioimageio.core pads it, so that the server's sample statistics are
        # those of the padded sample, as in process
        if not skip_input_padding:
            sample = sample.pad(pad_width=self._default_input_halo, mode=self.pad_mode)
        arrays = self._link.predict(
            sample.members,
            skip_preprocessing=skip_preprocessing,
            skip_postprocessing=skip_postprocessing,
        )
        members = _output_tensors(self._model_descr, arrays)
        if not skip_output_cropping:
            members = {
                m: _crop_halo(t, self._default_output_halo.get(m)) for m, t in members.items()
            }
        return Sample(members=dict(members), stat=sample.stat, id=sample.id)

    def predict_sample_with_blocking(
        self,
        sample: Sample,
        skip_preprocessing: bool = False,
        skip_postprocessing: bool = False,
        ns: Any = None,
        batch_size: int | None = None,
    ) -> Sample:
        ns = ns or self._default_blocksize_parameter
        if (
            self.processing == "local"
            or not isinstance(ns, int)
            or batch_size not in (None, self._default_batch_size)
            or self._default_batch_size != 1
            or isinstance(self._model_descr, v0_4.ModelDescr)
            or self._preceding_prediction_pipelines
        ):
            # blocks made here: processing here, each block's network on the server
            return super().predict_sample_with_blocking(
                sample, skip_preprocessing, skip_postprocessing, ns, batch_size
            )
        self._remote_adapter.check_loaded()
        arrays = self._link.predict(
            sample.members,
            skip_preprocessing=skip_preprocessing,
            skip_postprocessing=skip_postprocessing,
            blocksize=ns,
        )
        return Sample(
            members=dict(_output_tensors(self._model_descr, arrays)),
            stat=sample.stat,
            id=sample.id,
        )


def _crop_halo(tensor: Tensor, halo: Mapping[Any, Any] | None) -> Tensor:
    if not halo:
        return tensor
    return tensor[{a: slice(h.left, None if h.right == 0 else -h.right) for a, h in halo.items()}]


def build_pipeline(
    model: str | Path | AnyModelDescr,
    *,
    server: str | ModelRunnerClient,
    processing: ProcessingPlace,
    weight_format: str | None,
    device: str | None,
    token: str | None,
    timeout: float | None,
    default_blocksize_parameter: int,
    default_batch_size: int,
    dataset_for_initial_statistics: Iterable[Sample | Sequence[Tensor]],
    keep_updating_initial_dataset_statistics: bool,
    fixed_dataset_statistics: Mapping[Measure, MeasureValue],
) -> ModelRunnerPipeline:
    descr = _model_description(model)
    # bioimageio.core's choice of weights, for its results: the server's own would prefer ONNX
    weight_format = weight_format or _core_default_weight_format(descr)
    if isinstance(server, ModelRunnerClient):
        client, owns = server, False
    else:
        client, owns = ModelRunnerClient(server, token=token, timeout=timeout), True
    link = ServerLink(client, model, owns_client=owns, weight_format=weight_format, device=device)
    input_ids = get_member_ids(descr.inputs)

    def dataset() -> Iterable[Sample]:
        # as bioimageio.core's create_prediction_pipeline reads it
        common: dict[Any, Any] = {}
        for i, x in enumerate(dataset_for_initial_statistics):
            yield (
                x
                if isinstance(x, Sample)
                else Sample(members=dict(zip(input_ids, x, strict=False)), stat=common, id=i)
            )

    preprocessing, postprocessing = setup_pre_and_postprocessing(
        descr,
        dataset(),
        keep_updating_initial_dataset_stats=keep_updating_initial_dataset_statistics,
        fixed_dataset_stats=fixed_dataset_statistics,
    )
    return ModelRunnerPipeline(
        processing=processing,
        link=link,
        name=descr.name,
        model_description=descr,
        preprocessing=preprocessing,
        postprocessing=postprocessing,
        model_adapter=ModelRunnerModelAdapter(descr, link),
        default_blocksize_parameter=default_blocksize_parameter,
        default_batch_size=default_batch_size,
    )


def _model_description(model: str | Path | AnyModelDescr) -> AnyModelDescr:
    if isinstance(model, (v0_4.ModelDescr, v0_5.ModelDescr)):
        return model
    if not isinstance(model, (str, Path)):
        raise InvalidArgumentError(
            f"model must be a model description or a source bioimageio.core loads, got "
            f"{type(model).__name__}"
        )
    # as bioimageio.core.predict loads a source
    loaded = load_description(model)
    if not isinstance(loaded, (v0_4.ModelDescr, v0_5.ModelDescr)):
        raise InvalidArgumentError(
            f"expected a model description at {model}, got {type(loaded).__name__}",
            details={"source": str(model)},
        )
    return loaded


def _core_default_weight_format(descr: AnyModelDescr) -> str | None:
    from bioimageio.core.backends import DEFAULT_WEIGHT_FORMAT_PRIORITY_ORDER

    present = [w for w in DEFAULT_WEIGHT_FORMAT_PRIORITY_ORDER if getattr(descr.weights, w, None)]
    return present[0] if present else None
