"""modelrunner as a bioimageio.core backend: a ``PredictionPipeline`` whose work runs on a server.

>>> from bioimageio.core import predict
>>> from modelrunner.client import create_prediction_pipeline
>>> pipeline = create_prediction_pipeline("path/to/bioimageio.yaml", server="gpu-host:50051")
>>> output = predict(model=pipeline, inputs=image)  # bioimageio.core's own function

The pipeline is a :class:`bioimageio.core.PredictionPipeline` (``bioimageio.core.predict``
accepts nothing else), so ``predict``, ``predict_many``, ``predict_sample_without_blocking``,
``predict_sample_with_blocking``, ``with pipeline:`` and ``load``/``unload`` work unchanged and
give bioimageio.core's results for the same call. Samples and blocks travel over Arrow Flight.

``processing="remote"`` (the default): a whole sample goes to the server raw and comes back
postprocessed: bioimageio.core's pipeline runs there on the sample as this side shaped it (padded
by the model's halo, as ``predict`` does; ``PredictCommand.keep_shape``), and a prediction with a
blocksize parameter is bioimageio.core's blockwise prediction on the server. Sample statistics
are computed there from the sample; dataset statistics are those of the server's warm pipeline
(the samples it has seen), so pass ``fixed_dataset_statistics`` with ``processing="local"``.
Calls that split a sample here (fixed block shapes, single blocks, other models' outputs as
inputs) run their processing here and the network on the server.

``processing="local"``: bioimageio.core runs the processing here, with every statistic it
computes staying here, and the server runs the network alone (bioimageio.core's
``RemoteModelAdapter`` role): what crosses the network is the preprocessed sample or block, and
the network's raw output.

The model is added to the server on first use (a local package is uploaded when the server does
not read the path itself) and stays warm there: ``unload()`` and leaving ``with`` only end this
pipeline's use of it, and ``close()`` also closes the connection the pipeline opened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner.errors import InvalidArgumentError

from ._sync import ModelRunnerClient

if TYPE_CHECKING:
    from bioimageio.core import Sample, Tensor
    from bioimageio.core.stat_measures import Measure, MeasureValue
    from bioimageio.spec.model import AnyModelDescr

    from ._core_backend import ModelRunnerPipeline, ProcessingPlace


def create_prediction_pipeline(
    model: str | Path | AnyModelDescr,
    *,
    server: str | ModelRunnerClient,
    processing: ProcessingPlace = "remote",
    weight_format: str | None = None,
    device: str | None = None,
    token: str | None = None,
    timeout: float | None = 300.0,
    default_blocksize_parameter: int = 10,
    default_batch_size: int = 1,
    dataset_for_initial_statistics: Iterable[Sample | Sequence[Tensor]] = (),
    keep_updating_initial_dataset_statistics: bool = False,
    fixed_dataset_statistics: Mapping[Measure, MeasureValue] | None = None,
) -> ModelRunnerPipeline:
    """A bioimageio.core ``PredictionPipeline`` for ``model`` that runs on a modelrunner server.

    Args:
        model: a bioimage.io model description, or any source bioimageio.core loads (a folder,
            a ``bioimageio.yaml``, a ``.zip``, a URL, a bioimage.io id).
        server: the server's control address (``"host:50051"``), or a client to share (it stays
            open when the pipeline closes).
        processing: ``"remote"``: pre- and postprocessing run on the server; ``"local"``: here,
            and only the network on the server.
        weight_format, device: which weights the server runs, and where (``None``: the
            server's choice, as for ``ModelRunnerClient.predict``).
        token, timeout: for the client made from an address (see ``ModelRunnerClient``).
        default_blocksize_parameter, default_batch_size: as for bioimageio.core's
            ``create_prediction_pipeline``.
        dataset_for_initial_statistics, keep_updating_initial_dataset_statistics,
        fixed_dataset_statistics: as for bioimageio.core's ``create_prediction_pipeline``;
            with ``processing="local"`` only (remote processing computes its statistics on the
            server).

    Raises:
        InvalidArgumentError: an unknown ``processing``, or statistics with remote processing.
    """
    if processing not in ("remote", "local"):
        raise InvalidArgumentError(
            f"processing must be 'remote' or 'local', got {processing!r}",
            details={"processing": str(processing)},
        )
    statistics_given = bool(fixed_dataset_statistics) or keep_updating_initial_dataset_statistics
    if processing == "remote" and (statistics_given or _non_empty(dataset_for_initial_statistics)):
        raise InvalidArgumentError(
            "dataset statistics are computed where the processing runs: pass them with "
            "processing='local' (remote processing computes them on the server)",
            details={"processing": processing},
        )
    from ._core_backend import build_pipeline  # bioimageio.core only when asked for

    return build_pipeline(
        model,
        server=server,
        processing=processing,
        weight_format=weight_format,
        device=device,
        token=token,
        timeout=timeout,
        default_blocksize_parameter=default_blocksize_parameter,
        default_batch_size=default_batch_size,
        dataset_for_initial_statistics=dataset_for_initial_statistics,
        keep_updating_initial_dataset_statistics=keep_updating_initial_dataset_statistics,
        fixed_dataset_statistics=dict(fixed_dataset_statistics or {}),
    )


def _non_empty(items: Iterable[Any]) -> bool:
    return bool(items) if isinstance(items, Sequence) else True
