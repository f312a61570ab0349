"""The runtimes a volume's blocks go to: one per runtime serving the model (the control service
lists them, best first), all fixed on the run's weight format and device, each predicting a
block in block mode (``PredictRequest.block_statistics``: the statistics of its whole sample)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import numpy as np

from modelrunner import errors
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_client import reachable_uri

from ._volume_blocks import Block
from ._volume_pipeline import BlockRuntime
from ._volume_run import VolumeRun

logger = logging.getLogger(__name__)


def routes_for_the_weights(run: VolumeRun, timeout: float | None) -> list[BlockRuntime]:
    """The run's weight format and device, fixed in its identity and options (so that every
    block, on every runtime, now and when resumed, is computed with them), and the runtimes
    that serve the model with them."""
    weights = next((d.record.identity.get("weights") for d in run.opened.values()), None)
    if weights is None:  # a new run
        weights = _weights_loaded(run, _routes(run, timeout), timeout)
    run.identity["weights"] = dict(weights)
    run.options.update(weights)
    return _routes(run, timeout)


def _weights_loaded(
    run: VolumeRun, routes: list[BlockRuntime], timeout: float | None
) -> dict[str, str]:
    """The weight format and device the first runtime that answers loads the model with for
    the options asked for (those a prediction there would use)."""
    gone: list[str] = []
    for route in routes:
        try:
            loaded = run.client.runtimes.load(
                route.name,
                run.info.id,
                run.options["weight_format"],
                run.options["device"],
                timeout=timeout,
            )
        except errors.UnavailableError as e:
            logger.warning("runtime %s is unavailable (%s): trying the next", route.name, e)
            gone.append(route.name)
            continue
        return {"weight_format": loaded.model.weight_format, "device": loaded.model.device}
    raise errors.UnavailableError(
        f"no runtime serving model {run.info.id[:12]} answers ({', '.join(gone)})"
    )


def predict_first(
    routes: list[BlockRuntime], block: Block, inputs: np.ndarray
) -> tuple[dict[str, np.ndarray], list[BlockRuntime]]:
    """The first block's outputs from the first runtime that answers, and the runtimes left
    (without those that went away)."""
    left = list(routes)
    while left:
        try:
            return left[0].predict(block, inputs), left
        except errors.UnavailableError as e:
            logger.warning("runtime %s went away (%s): trying the next", left[0].name, e)
            left.pop(0)
    raise errors.UnavailableError(
        f"no runtime answered ({', '.join(r.name for r in routes)}); nothing was written"
    )


def _routes(run: VolumeRun, timeout: float | None) -> list[BlockRuntime]:
    """One route per runtime serving the model (the control service lists them, best first)."""
    client = run.client
    route = client.route(run.info.id, run.options["weight_format"], run.options["device"], timeout)
    uris: list[str] = []
    for uri in route.flight_uris:
        reachable = reachable_uri(uri, client.address)
        if reachable not in uris:
            uris.append(reachable)
    if not uris:
        raise errors.UnavailableError(f"no runtime serves model {run.info.id[:12]}")
    return [BlockRuntime(uri, _predictor(run, route.model_id, uri, timeout)) for uri in uris]


def _predictor(
    run: VolumeRun, model_id: str, uri: str, timeout: float | None
) -> Callable[[Block, np.ndarray], dict[str, np.ndarray]]:
    client = run.client
    requests: dict[tuple[int, ...], PredictRequest] = {}
    lock = threading.Lock()

    def request_for(sample: tuple[int, ...]) -> PredictRequest:
        """The block-mode request of a sample (its statistics), without inputs."""
        with lock:
            found = requests.get(sample)
            if found is None:
                found = PredictRequest(
                    model_id=model_id,
                    weight_format=run.options["weight_format"],
                    device=run.options["device"],
                    nan_policy=run.options["nan_policy"],
                    block_statistics=tuple(run.statistics.get(sample, ())),
                    timeout_s=timeout,
                )
                if len(requests) > 8:  # samples come in order: the last few are enough
                    requests.clear()
                requests[sample] = found
            return found

    dims = {run.spec.id: tuple(run.sent)}

    def predict(block: Block, inputs: np.ndarray) -> dict[str, np.ndarray]:
        request = request_for(block.sample).with_inputs({run.spec.id: inputs}, dims)
        return client.runtimes.predict(uri, request, batch_bytes=client.batch_bytes)

    return predict
