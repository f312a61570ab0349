"""The gRPC ``ControlService``: proto in, the logic layer (:class:`ControlPlane`), proto out.
The servicer holds the plane and nothing else of the service: every RPC converts its request,
calls the plane and converts the answer back.

Errors are raised as ``ModelRunnerError`` and mapped by the error interceptor.

Uploads, validations and adds are long calls with their own limits (the plane's
:mod:`.call_limits`): over them a call is refused with RESOURCE_EXHAUSTED, so they never take
every thread of the server. Validations and adds stop (their description worker is killed) when
the client goes away.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from modelrunner import converters, errors, types
from modelrunner.entry_server.call_limits import cancelled_when
from modelrunner.entry_server.control_plane import ControlPlane
from modelrunner.entry_server.edge.auth_interceptor import current_identity
from modelrunner.entry_server.edge.call_context import (
    ClientIdentity,
    client_gone,
    token_or_host,
    with_idle_timeout,
)
from modelrunner.entry_server.packages.uploads import UploadHeader
from modelrunner.v1 import control_pb2, control_pb2_grpc, models_pb2


class ControlServicer(control_pb2_grpc.ControlServiceServicer):
    def __init__(
        self, control: ControlPlane, *, client_identity: ClientIdentity | None = None
    ) -> None:
        """``client_identity`` says who a call comes from, for per-client upload limits:
        by default the caller's token when calls are authenticated, else its host."""
        self._control = control
        self._limits = control.limits
        self._client_identity = client_identity or token_or_host

    def AddModel(
        self, request: control_pb2.AddModelRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.AddModelResponse]:
        with self._limits.adds.slot():
            yield from self._add_model(request, context)

    def _add_model(
        self, request: control_pb2.AddModelRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.AddModelResponse]:
        source = converters.from_pb_source(request.source)
        identity = current_identity()
        # The add runs in its own thread so its progress events can be streamed while it works.
        events: queue.Queue[tuple[str, Any]] = queue.Queue()
        finished = threading.Event()
        context.add_callback(finished.set)

        def progress(event: types.Progress) -> None:
            if finished.is_set():
                raise errors.CancelledError("AddModel was cancelled by the client")
            events.put(("progress", event))

        def work() -> None:
            try:
                with cancelled_when(finished.is_set):
                    events.put(("result", self._control.add_model(source, progress, identity)))
            except BaseException as exc:  # noqa: BLE001 - handed to the RPC thread, which raises it
                events.put(("error", exc))

        threading.Thread(target=work, name="add-model", daemon=True).start()
        while True:
            kind, value = events.get()
            if kind == "progress":
                yield control_pb2.AddModelResponse(progress=converters.to_pb_progress(value))
            elif kind == "result":
                info, created = value
                yield control_pb2.AddModelResponse(
                    result=control_pb2.AddModelResult(
                        model=converters.to_pb_model_info(info), created=created
                    )
                )
                return
            else:
                raise value

    def UploadPackage(
        self,
        request_iterator: Iterator[control_pb2.UploadPackageRequest],
        context: grpc.ServicerContext,
    ) -> control_pb2.UploadPackageResponse:
        client = self._client_identity(context)
        with self._limits.uploads.slot(), self._limits.uploads_per_client.slot(client):
            return self._upload_package(request_iterator, context, client)

    def _upload_package(
        self,
        request_iterator: Iterator[control_pb2.UploadPackageRequest],
        context: grpc.ServicerContext,
        client: str,
    ) -> control_pb2.UploadPackageResponse:
        settings = self._control.settings
        messages = with_idle_timeout(
            request_iterator,
            timeout_s=settings.upload_idle_timeout_s,
            setting="upload_idle_timeout_s",
            what="upload aborted",
        )
        first = next(messages, None)
        if first is None or first.WhichOneof("part") != "header":
            raise errors.InvalidArgumentError(
                "the first UploadPackageRequest must carry the header (file name, size, sha256)"
            )
        header = UploadHeader(
            filename=first.header.filename,
            size_bytes=first.header.size_bytes,
            sha256=first.header.sha256,
        )

        def chunks() -> Iterator[bytes]:
            for message in messages:
                if message.WhichOneof("part") == "header":
                    raise errors.InvalidArgumentError(
                        "only the first UploadPackageRequest may carry a header"
                    )
                yield message.chunk
            if not context.is_active():  # a cancelled stream ends like a finished one
                raise errors.CancelledError("UploadPackage was cancelled by the client")

        stored = self._control.receive_upload(header, chunks(), client=client)
        return control_pb2.UploadPackageResponse(
            upload_id=stored.upload_id, size_bytes=stored.size_bytes, sha256=stored.sha256
        )

    def ListModels(
        self, request: control_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> control_pb2.ListModelsResponse:
        models = self._control.list_models(current_identity())
        return control_pb2.ListModelsResponse(
            models=[converters.to_pb_model_info(m) for m in models]
        )

    def DescribeModel(
        self, request: control_pb2.DescribeModelRequest, context: grpc.ServicerContext
    ) -> control_pb2.DescribeModelResponse:
        info = self._control.describe(request.model_id, current_identity())
        return control_pb2.DescribeModelResponse(model=converters.to_pb_model_info(info))

    def ValidateModel(
        self, request: control_pb2.ValidateModelRequest, context: grpc.ServicerContext
    ) -> control_pb2.ValidateModelResponse:
        source = converters.from_pb_source(request.source)
        with self._limits.validations.slot(), cancelled_when(client_gone(context)):
            report = self._control.validate(source, perform_io_checks=request.perform_io_checks)
        return control_pb2.ValidateModelResponse(report=converters.to_pb_report(report))

    def RemoveModel(
        self, request: control_pb2.RemoveModelRequest, context: grpc.ServicerContext
    ) -> control_pb2.RemoveModelResponse:
        removal = self._control.remove_model(request.model_id, current_identity())
        return control_pb2.RemoveModelResponse(
            model_id=removal.model_id,
            freed_bytes=removal.freed_bytes,
            calls_in_flight=removal.calls_in_flight,
        )

    def GetServerInfo(
        self, request: control_pb2.GetServerInfoRequest, context: grpc.ServicerContext
    ) -> control_pb2.GetServerInfoResponse:
        return converters.to_pb_server_info(self._control.server_info(current_identity()))

    def TestModel(
        self, request: control_pb2.TestModelRequest, context: grpc.ServicerContext
    ) -> control_pb2.TestModelResponse:
        with self._limits.tests.slot():
            report = self._control.test_model(
                request.model_id,
                request.weight_format,
                request.device,
                timeout_s=context.time_remaining(),
                identity=current_identity(),
            )
        return control_pb2.TestModelResponse(report=converters.to_pb_report(report))

    def GetModelRoute(
        self, request: control_pb2.GetModelRouteRequest, context: grpc.ServicerContext
    ) -> control_pb2.GetModelRouteResponse:
        route = self._control.route(
            request.model_id,
            request.weight_format,
            request.device,
            current_identity(),
            wait_s=_wait_within(context),
        )
        return control_pb2.GetModelRouteResponse(
            model_id=route.model_id,
            flight_uris=list(route.flight_uris),
            runtime_id=route.runtime_id,
        )

    def RegisterRuntime(
        self, request: control_pb2.RegisterRuntimeRequest, context: grpc.ServicerContext
    ) -> control_pb2.RegisterRuntimeResponse:
        runtime = request.runtime if request.HasField("runtime") else models_pb2.RuntimeInfo()
        registration = self._control.register_runtime(
            converters.from_pb_runtime(runtime), request.cache_dir, current_identity()
        )
        return control_pb2.RegisterRuntimeResponse(
            heartbeat_interval_s=registration.heartbeat_interval_s,
            shared_cache_dir=registration.shared_cache_dir,
        )

    def FetchModelPackage(
        self, request: control_pb2.FetchModelPackageRequest, context: grpc.ServicerContext
    ) -> Iterator[control_pb2.FetchModelPackageResponse]:
        with (
            self._limits.package_fetches.slot(),
            self._control.package_zip(request.model_id) as package,
        ):
            yield control_pb2.FetchModelPackageResponse(
                size_bytes=package.size_bytes, sha256=package.sha256
            )
            for chunk in package.chunks():
                yield control_pb2.FetchModelPackageResponse(chunk=chunk)

    def PublishModel(
        self, request: control_pb2.PublishModelRequest, context: grpc.ServicerContext
    ) -> control_pb2.PublishModelResponse:
        model_id, published = self._control.publish(
            request.model_id, request.published, current_identity()
        )
        return control_pb2.PublishModelResponse(model_id=model_id, published=published)

    def CheckCaller(
        self, request: control_pb2.CheckCallerRequest, context: grpc.ServicerContext
    ) -> control_pb2.CheckCallerResponse:
        identity, model_id = self._control.check_caller(request.token, request.model_id)
        return control_pb2.CheckCallerResponse(
            name=identity.name,
            role=identity.role.value,
            workspace=identity.workspace,
            model_id=model_id,
            audience=identity.audience,
        )


def _wait_within(context: grpc.ServicerContext) -> float | None:
    """How long a call may wait for a runtime: a little less than its remaining time, so that
    the caller hears "no runtime registered" (UNAVAILABLE, retried) rather than its deadline."""
    left = context.time_remaining()
    return None if left is None else max(0.0, left - 0.2)
