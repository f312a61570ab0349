"""The synchronous client."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from typing_extensions import Unpack

from modelrunner import errors, types
from modelrunner.predict_command import to_command
from modelrunner.predict_request import PredictRequest
from modelrunner.runtime_client import Route, RuntimeClient, reachable_uri
from modelrunner.tls import ClientTls
from modelrunner.wire import DEFAULT_BATCH_BYTES

from ._control import ControlClient
from ._health import check_health
from ._inputs import Inputs
from ._progress import ProgressOption, progress_callback
from ._requests import PredictKeywords, StreamKeywords, VolumeKeywords, build_request
from ._retries import DEFAULT_RETRY_S, with_retries
from ._sources import SourceLike
from ._stream import DEFAULT_IDLE_TIMEOUT_S, FrameStream, OnError
from ._timeouts import USE_CLIENT_DEFAULT, Timeout, resolve_timeout
from ._volume_calls import VolumeCalls

if TYPE_CHECKING:
    from ._volume_result import VolumeResult

_T = TypeVar("_T")


class ModelRunnerClient:
    """Talks to a modelrunner server: the control service (gRPC) and its runtimes (Arrow Flight).

    >>> with ModelRunnerClient("localhost:50051") as client:
    ...     model = client.add_model("path/to/bioimageio.yaml")
    ...     outputs = client.predict(model.id, image)

    Every method takes ``timeout`` in seconds: ``None`` waits forever, and by default the client's
    own ``timeout`` applies. Errors are :class:`modelrunner.errors.ModelRunnerError` subclasses.
    Calls that are safe to repeat ride through a server or runtime restart (``retry_s``, see
    ``client/_retries.py``); predictions are never repeated behind your back.
    """

    def __init__(
        self,
        address: str = "localhost:50051",
        *,
        token: str | None = None,
        tls: bool | str | Path = False,
        client_cert: tuple[str | Path, str | Path] | None = None,
        timeout: float | None = 300.0,
        batch_bytes: int = DEFAULT_BATCH_BYTES,
        retry_s: float = DEFAULT_RETRY_S,
    ) -> None:
        """``token``: the bearer token a server with authentication wants (default
        ``$MODELRUNNER_TOKEN``); ``tls``: True for TLS with the system's root certificates, or
        the path of a PEM file of roots; ``client_cert``: (certificate, key) PEM paths for a
        server that wants mutual TLS; ``retry_s``: how long calls that are safe to repeat
        (list, describe, route, server info, health, load) retry a server or runtime that is
        unavailable, within each call's timeout (0: never retry)."""
        self.address = address
        self.timeout = timeout
        self.retry_s = retry_s
        self.batch_bytes = batch_bytes
        token = token or os.environ.get("MODELRUNNER_TOKEN") or None
        client_tls = ClientTls.from_option(tls, client_cert)
        self._control = ControlClient(address, token=token, tls=client_tls)
        self._runtimes = RuntimeClient(token=token, tls=client_tls)
        self._closed = False

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connections. Calls in progress (from other threads) are cancelled: they
        raise :class:`~modelrunner.errors.CancelledError`, and the runtime stops their work at
        its next tile or frame."""
        if not self._closed:
            self._closed = True
            self._runtimes.close()
            self._control.close()

    def __enter__(self) -> ModelRunnerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _timeout(self, timeout: Timeout) -> float | None:
        return resolve_timeout(timeout, self.timeout)

    def _retried(
        self,
        what: str,
        call: Callable[[float | None], _T],
        timeout: Timeout,
        before_retry: Callable[[errors.ModelRunnerError], None] | None = None,
    ) -> _T:
        return with_retries(
            call,
            timeout=self._timeout(timeout),
            retry_s=self.retry_s,
            what=what,
            before_retry=before_retry,
        )

    # -- health --------------------------------------------------------------------------------

    def health(self, service: str = "", *, timeout: Timeout = USE_CLIENT_DEFAULT) -> str:
        """The standard gRPC health status of ``service``: "SERVING" or "NOT_SERVING". ``""``
        (the server) is SERVING while a runtime can predict; ``"liveness"`` while the process
        lives (see docs/deployment.md)."""
        return self._retried(
            "health check",
            lambda left: check_health(self._control.channel, service, timeout=left),
            timeout,
        )

    def wait_until_ready(self, timeout: float = 60.0) -> None:
        """Wait until the server is ready (a runtime can predict); DeadlineExceededError after
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                if self.health(timeout=max(0.1, left)) == "SERVING":
                    return
            except errors.UnavailableError:
                pass
            if left <= 0:
                raise errors.DeadlineExceededError(
                    f"the server at {self.address} was not ready within {timeout:g} s"
                )
            time.sleep(min(0.1, max(0.0, left)))

    # -- registry ------------------------------------------------------------------------------

    def add_model(
        self,
        source: SourceLike,
        *,
        upload: bool | None = None,
        progress: ProgressOption = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ModelInfo:
        """Add a model from a folder, a ``bioimageio.yaml``/``rdf.yaml``, a ``.zip``, an http(s)
        URL, a bioimage.io id (e.g. ``"affable-shark"``) or package bytes.

        Local paths are read by the server when it runs on this host and lets clients name
        paths there (its setting ``path_source_roots``), and uploaded otherwise (``upload=True``
        forces an upload). Adding the same content again returns the same model.
        """

        def add(spec: types.ModelSourceSpec) -> types.ModelInfo:
            with progress_callback(progress, "add model") as report:
                info, _ = self._control.add_model(
                    spec, timeout=self._timeout(timeout), progress=report
                )
            return info

        return self._control.with_source(source, upload, progress, self._timeout(timeout), add)

    def validate(
        self,
        source: SourceLike,
        *,
        perform_io_checks: bool = True,
        upload: bool | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ValidationReport:
        """Validate a model description without adding it. An invalid description gives a report
        with ``status == "failed"``, not an exception."""
        return self._control.with_source(
            source,
            upload,
            False,
            self._timeout(timeout),
            lambda spec: self._control.validate(
                spec, perform_io_checks=perform_io_checks, timeout=self._timeout(timeout)
            ),
        )

    def list_models(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> list[types.ModelInfo]:
        return self._retried(
            "list models", lambda left: self._control.list_models(timeout=left), timeout
        )

    def describe(self, model_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> types.ModelInfo:
        """Full metadata of a model: tensor specs, weight formats and the description (``rdf``)."""
        return self._retried(
            "describe", lambda left: self._control.describe(model_id, timeout=left), timeout
        )

    def remove_model(
        self, model_id: str, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> types.RemovedModel:
        """Remove the model from your workspace (and from the server when no other workspace
        holds it; an admin removes it everywhere). The result says how many predictions were
        running on it (``calls_in_flight``: the removal waited for them) and the cache space
        freed."""
        removed = self._control.remove(model_id, timeout=self._timeout(timeout))
        # its sessions, which the runtime ended: not the next prediction's to find
        self._runtimes.sessions.drop_model(removed.model_id)
        return removed

    def publish_model(
        self, model_id: str, published: bool = True, *, timeout: Timeout = USE_CLIENT_DEFAULT
    ) -> None:
        """Make a model visible in every workspace (``published=False``: only in those that
        added it again). Needs the admin role."""
        self._control.publish(model_id, published, timeout=self._timeout(timeout))

    def server_info(self, *, timeout: Timeout = USE_CLIENT_DEFAULT) -> types.ServerInfo:
        return self._retried(
            "server info", lambda left: self._control.server_info(timeout=left), timeout
        )

    # -- runtime -------------------------------------------------------------------------------

    def test(
        self,
        model_id: str,
        weight_format: str | None = None,
        *,
        device: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.ValidationReport:
        """Run bioimageio.core's model test on the server; the outcome is a report."""
        return self._control.test(
            model_id, weight_format or "", device or "", timeout=self._timeout(timeout)
        )

    def load(
        self,
        model_id: str,
        *,
        weight_format: str | None = None,
        device: str | None = None,
        timeout: Timeout = USE_CLIENT_DEFAULT,
    ) -> types.LoadInfo:
        """Warm the model up on its runtime, so the first prediction does not pay for loading.
        A runtime that is gone is replaced by the one the control service routes to next."""

        def load_once(left: float | None) -> types.LoadInfo:
            route, uri = self._route(model_id, weight_format or "", device or "", left)
            with self._forget_route_if_gone(route):
                return self._runtimes.load(
                    uri, route.model_id, weight_format or "", device or "", timeout=left
                )

        return self._retried("load", load_once, timeout)

    def predict(
        self,
        model_id: str,
        inputs: Inputs,
        *,
        progress: ProgressOption = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        **options: Unpack[PredictKeywords],
    ) -> dict[str, np.ndarray]:
        """Run the model on one sample; returns its outputs by output id.

        ``inputs`` is one array (single-input models) or a dict by input id; arrays may have
        fewer axes than the model (e.g. a 2-D image for a ``bcyx`` model) and any spatial size.
        ``options`` (:class:`PredictKeywords`): ``weight_format``, ``device``; ``blocksize``,
        bioimageio.core's blocksize parameter for tiled prediction; ``nan_policy``;
        ``skip_preprocessing``, ``skip_postprocessing``; ``reference_path``: run
        bioimageio.core's own pipeline even where the runtime's verified fast path serves the
        model; ``precision`` ("float16" or "bfloat16") runs the network in reduced precision on
        the fast path (PyTorch and TorchScript weights; the error it costs on the package's
        test inputs is in ``describe(model_id).loaded``); ``keep_shape``: bioimageio.core's
        own call on the sample exactly as sent, no padding or tiling to the model's sizes
        (what :func:`create_prediction_pipeline` sends); ``input_padding="halo"``: what
        ``bioimageio.core.predict()`` does, padding by the outputs' halo. Outputs arrive as
        read-only views of the received buffers: ``.copy()`` one to change it.

        Calls in a row reuse one open exchange (a session) per model, options and input shapes,
        which matters for small frames; samples over 64 MiB, and calls with ``progress``, take
        an exchange of their own. A session idle for 5 s is closed.

        Ctrl-C (``KeyboardInterrupt`` in the main thread) or :meth:`close` from another thread
        cancels the call: the runtime stops at its next tile, and the call raises
        ``KeyboardInterrupt`` or :class:`~modelrunner.errors.CancelledError`.
        """
        return self.send(
            self.build_request(model_id, inputs, timeout=timeout, **options), progress=progress
        )

    def build_request(
        self,
        model_id: str,
        inputs: Inputs,
        *,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        **options: Unpack[PredictKeywords],
    ) -> PredictRequest:
        """The :class:`~modelrunner.predict_request.PredictRequest` that :meth:`predict` sends
        (InvalidArgumentError for an option that is not valid), to send with :meth:`send`."""
        return build_request(model_id, inputs, timeout_s=self._timeout(timeout), **options)

    def send(
        self, request: PredictRequest, *, progress: ProgressOption = False
    ) -> dict[str, np.ndarray]:
        """Predict ``request`` (from :meth:`build_request`) on the runtime the control service
        routes its model to; see :meth:`predict`."""
        self._runtimes.calls.raise_if_cancelled("the prediction")
        route, uri = self._route(
            request.model_id, request.weight_format, request.device, request.timeout_s
        )
        routed = request.with_model(route.model_id)
        try:
            if not progress:  # the lockstep case, without a context to enter
                return self._runtimes.predict(uri, routed, batch_bytes=self.batch_bytes)
            with progress_callback(progress, "predict") as report:
                return self._runtimes.predict(
                    uri, routed, batch_bytes=self.batch_bytes, progress=report
                )
        except errors.UnavailableError:
            self._forget_route(route)
            raise

    def predict_stream(
        self,
        model_id: str,
        frames: Iterable[Inputs],
        *,
        max_in_flight: int = 8,
        on_error: OnError = "raise",
        timeout: Timeout = None,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT_S,
        **options: Unpack[StreamKeywords],
    ) -> FrameStream:
        """Run the model on a sequence of frames over one stream; yields each frame's outputs in
        order. At most ``max_in_flight`` frames travel unanswered (back-pressure); the runtime may
        stack up to ``max_batch_size`` waiting frames along the model's batch axis (only frames
        already waiting: a sparse stream is not delayed). ``max_batch_size=0`` leaves it to the
        runtime: up to 8 on a GPU, one at a time on a CPU. ``options``
        (:class:`StreamKeywords`): ``weight_format``, ``device``, ``max_batch_size``,
        ``nan_policy``, ``reference_path``, ``precision``, as for :meth:`predict`.

        A failed frame raises :class:`FrameError` (``on_error="raise"``; the stream goes on with
        the next ``next()``) or is yielded as one (``on_error="yield"``). Closing the stream, or
        leaving a ``for`` loop over it, stops the work on the server. ``timeout`` bounds the whole
        stream and is off by default; ``idle_timeout`` (seconds, None: no limit) bounds the wait
        for the runtime's next answer, after which the stream is cancelled and raises
        DeadlineExceededError (a frozen runtime).
        """
        request = build_request(model_id, None, timeout_s=self._timeout(timeout), **options)
        route, uri = self._route(model_id, request.weight_format, request.device, request.timeout_s)
        with self._forget_route_if_gone(route):
            connection = self._runtimes.connection(uri)
        stream = FrameStream(
            connection,
            to_command(request.with_model(route.model_id), kind="stream"),
            frames,
            calls=self._runtimes.calls,
            max_in_flight=max_in_flight,
            timeout=request.timeout_s,
            batch_bytes=self.batch_bytes,
            on_error=on_error,
            idle_timeout=idle_timeout,
        )
        stream.on_unavailable = lambda: self._forget_route(route)
        return stream

    def predict_volume(
        self,
        model_id: str,
        source: str | Path | Any,
        destination: str | Path | Mapping[str, str | Path],
        *,
        progress: ProgressOption = False,
        timeout: Timeout = USE_CLIENT_DEFAULT,
        **options: Unpack[VolumeKeywords],
    ) -> VolumeResult:
        """Predict a volume of any size block by block, from ``source`` into the OME-Zarr image
        ``destination``, on every runtime that serves the model, in memory bounded by a few
        blocks. ``source``: OME-Zarr (NGFF 0.4/0.5, ``level`` of its pyramid), TIFF, ``.npy``,
        or an array (zarr, dask, numpy) with ``axes``. Axes the model lacks run one index at a
        time; blocks overlap by the model's halo, and the statistics its normalisation needs
        are those of each whole sample: the result equals bioimageio.core's blockwise
        prediction of the whole array.

        ``destination`` (a mapping by output id, or ``<name>_<output id>`` beside the path)
        gets the source's scale and translation, a multiscale pyramid, and a record of the run
        and its finished blocks: ``resume=True`` finishes a run that stopped (Ctrl-C, kill -9,
        a runtime gone) with only the missing blocks, bit for bit the same. A destination of
        anything else or another run is refused (FailedPreconditionError), never overwritten.

        ``options``: :class:`VolumeKeywords`. ``timeout``: for each block. Ctrl-C or
        :meth:`close` stops it within a second, leaving a destination to resume."""
        from ._volume_prediction import predict_volume

        return predict_volume(
            self._volume_calls(),
            model_id,
            source,
            destination,
            timeout=self._timeout(timeout),
            progress=progress,
            **options,
        )

    # -- internals -----------------------------------------------------------------------------

    def _volume_calls(self) -> VolumeCalls:
        return VolumeCalls(
            self.describe, self._resolve, self._runtimes, self.address, self.batch_bytes
        )

    def _resolve(
        self, model_id: str, weight_format: str, device: str, timeout: float | None
    ) -> Route:
        """Where the model runs, asked of the control service (retried)."""
        return self._retried(
            "route",
            lambda left: self._control.route(model_id, weight_format, device, timeout=left),
            timeout,
        )

    def _route(
        self, model_id: str, weight_format: str, device: str, timeout: float | None
    ) -> tuple[Route, str]:
        """Where the model runs, and the URI of its best runtime as this client reaches it."""
        route = self._control.kept_route(model_id, weight_format, device) or self._resolve(
            model_id, weight_format, device, timeout
        )
        if not route.flight_uris:
            raise errors.UnavailableError(f"no runtime serves model {model_id!r}")
        return route, reachable_uri(route.flight_uris[0], self.address)

    @contextmanager
    def _forget_route_if_gone(self, route: Route) -> Iterator[None]:
        try:
            yield
        except errors.UnavailableError:
            self._forget_route(route)
            raise

    def _forget_route(self, route: Route) -> None:
        """The runtime went away (restart, scale-down): forget the cached route and connection,
        so the next call asks the control service again."""
        self._control.forget_routes()
        for uri in route.flight_uris:
            self._runtimes.drop(reachable_uri(uri, self.address))
