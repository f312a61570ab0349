"""The Open Inference Protocol (KServe V2, ``inference.GRPCInferenceService``) on the control
service's address, so tritonclient, KServe tooling and plain gRPC clients that know no Arrow can
run modelrunner's models: proto in, the inference plane (:class:`.InferencePlane`: readiness,
models, limits, and the runtime that holds the model), proto out. The servicer holds that plane
and nothing else.

Models are named by modelrunner id (or a unique prefix, or their bioimage.io id); the caller's
workspaces and the control service's routing apply as for Flight clients. Errors are
``ModelRunnerError`` with their status codes, mapped by the error interceptor; in a
``ModelStreamInfer`` stream a failed request is answered with its ``error_message`` and the
stream goes on, as Triton does. docs/open-inference.md has the rules.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

import grpc

from modelrunner import __version__, errors, types
from modelrunner.auth import AUTHORIZATION_HEADER, token_from_header
from modelrunner.entry_server.edge.auth_interceptor import current_identity
from modelrunner.entry_server.edge.call_context import (
    ClientIdentity,
    token_or_host,
    with_idle_timeout,
)
from modelrunner.entry_server.edge.open_inference_tensors import (
    declared_datatype,
    infer_response,
    input_arrays,
    metadata_shape,
    predict_request,
    requested_outputs,
)
from modelrunner.entry_server.inference_plane import InferencePlane, unnamed_model
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.transport_errors import bounded

logger = logging.getLogger(__name__)

V2_SERVICE_NAME = v2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
_STREAM_METHOD = f"/{V2_SERVICE_NAME}/ModelStreamInfer"
EXTENSIONS = ("model_stream_infer", "parameters")
"""What the server metadata announces beyond the core protocol: Triton's streaming extension,
and request parameters (weight format, device, blocksize, ...)."""


class OpenInferenceServicer(v2_grpc.GRPCInferenceServiceServicer):
    def __init__(
        self, plane: InferencePlane, *, client_identity: ClientIdentity | None = None
    ) -> None:
        """``client_identity`` says who a call comes from, for the per-client stream limit:
        by default the caller's token when calls are authenticated, else its host."""
        self._plane = plane
        self._limits = plane.limits
        self._client_identity = client_identity or token_or_host

    # -- health and metadata -----------------------------------------------------------------

    def ServerLive(
        self, request: v2.ServerLiveRequest, context: grpc.ServicerContext
    ) -> v2.ServerLiveResponse:
        return v2.ServerLiveResponse(live=True)

    def ServerReady(
        self, request: v2.ServerReadyRequest, context: grpc.ServicerContext
    ) -> v2.ServerReadyResponse:
        # the same readiness as the health service's (entry_server/runtimes/readiness.py)
        return v2.ServerReadyResponse(ready=self._plane.ready())

    def ServerMetadata(
        self, request: v2.ServerMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ServerMetadataResponse:
        return v2.ServerMetadataResponse(
            name="modelrunner", version=__version__, extensions=list(EXTENSIONS)
        )

    def ModelReady(
        self, request: v2.ModelReadyRequest, context: grpc.ServicerContext
    ) -> v2.ModelReadyResponse:
        ready = self._plane.model_ready(request.name, request.version, current_identity())
        return v2.ModelReadyResponse(ready=ready)

    def ModelMetadata(
        self, request: v2.ModelMetadataRequest, context: grpc.ServicerContext
    ) -> v2.ModelMetadataResponse:
        model = self._plane.model(request.name, request.version, current_identity())
        return v2.ModelMetadataResponse(
            name=model.id,
            versions=[model.version] if model.version else [],
            platform="bioimageio",
            inputs=[_tensor_metadata(t) for t in model.inputs],
            outputs=[_tensor_metadata(t) for t in model.outputs],
        )

    # -- inference -----------------------------------------------------------------------------

    def ModelInfer(
        self, request: v2.ModelInferRequest, context: grpc.ServicerContext
    ) -> v2.ModelInferResponse:
        with self._limits.infers.slot():
            return self._infer(request, context)

    def ModelStreamInfer(
        self, requests: Iterator[v2.ModelInferRequest], context: grpc.ServicerContext
    ) -> Iterator[v2.ModelStreamInferResponse]:
        client = self._client_identity(context)
        # the caller's right to stream is asked again at most every auth_cache_s: a revoked
        # token (or a role changed) ends the stream with UNAUTHENTICATED (PERMISSION_DENIED)
        rights = self._plane.stream_rights(_caller_token(context), _STREAM_METHOD)
        with self._limits.streams.slot(), self._limits.streams_per_client.slot(client):
            timeout_s = self._plane.settings.infer_stream_idle_timeout_s
            received = with_idle_timeout(
                requests,
                timeout_s=timeout_s,
                setting="infer_stream_idle_timeout_s",
                what=f"the stream sent no request for {timeout_s:g} s and was ended",
            )
            for request in received:
                rights.check()
                try:
                    response = self._infer(request, context)
                except Exception as exc:  # noqa: BLE001 - one request's failure, not the stream's
                    error = _as_error(exc)
                    yield v2.ModelStreamInferResponse(
                        error_message=f"[{error.code.name}] {error.message}",
                        infer_response=v2.ModelInferResponse(
                            model_name=request.model_name,
                            model_version=request.model_version,
                            id=request.id,
                        ),
                    )
                    continue
                yield v2.ModelStreamInferResponse(infer_response=response)

    def _infer(
        self, request: v2.ModelInferRequest, context: grpc.ServicerContext
    ) -> v2.ModelInferResponse:
        if not request.model_name:
            raise unnamed_model()
        wanted = predict_request(request.model_name, request.parameters, context.time_remaining())
        target = self._plane.target(wanted, request.model_version, current_identity())
        names = requested_outputs(request, target.model)
        arrays, dims = input_arrays(request)
        outputs = self._plane.predict(
            target.route,
            wanted.with_inputs(arrays, dims),
            token=_caller_token(context),
            cancelled=_cancelled_or_late(context, wanted.timeout_s),
        )
        return infer_response(request, target.model, outputs, names)


def _tensor_metadata(tensor: types.TensorSpec) -> v2.ModelMetadataResponse.TensorMetadata:
    return v2.ModelMetadataResponse.TensorMetadata(
        name=tensor.id, datatype=declared_datatype(tensor.dtype), shape=metadata_shape(tensor)
    )


def _as_error(exc: Exception) -> errors.ModelRunnerError:
    """A request's failure as the error a stream answers it with (bugs logged, as INTERNAL)."""
    if isinstance(exc, errors.ModelRunnerError):
        return bounded(exc)
    logger.error("a V2 stream request failed unexpectedly", exc_info=exc)
    return errors.InternalError(
        f"ModelStreamInfer failed: {type(exc).__name__}: {errors.clip(exc)}"
    )


def _cancelled_or_late(
    context: grpc.ServicerContext, timeout_s: float | None
) -> Callable[[], bool]:
    """What the runtime asks between blocks: whether the client went away; past the request's
    timeout it raises DEADLINE_EXCEEDED instead."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def cancelled() -> bool:
        if deadline is not None and time.monotonic() > deadline:
            raise errors.DeadlineExceededError(
                f"the prediction did not finish within its timeout of {timeout_s:g} s"
            )
        return not context.is_active()

    return cancelled


def _caller_token(context: grpc.ServicerContext) -> str | None:
    """The caller's bearer token, which goes on to the runtime with the request."""
    for key, value in context.invocation_metadata() or ():
        if key == AUTHORIZATION_HEADER:
            return token_from_header(value)
    return None
