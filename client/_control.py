"""Calls to the control service (gRPC), and model sources as the server gets them (a path it
does not read uploaded instead)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import grpc

from modelrunner import converters, errors, types
from modelrunner.channels import control_channel
from modelrunner.runtime_client import Route, RouteCache
from modelrunner.tls import ClientTls
from modelrunner.transport_errors import translated_errors
from modelrunner.types import ProgressCallback
from modelrunner.v1 import control_pb2, control_pb2_grpc

from ._progress import ProgressOption, progress_callback
from ._sources import SourceLike, Upload, interpret_source, is_local_address

_T = TypeVar("_T")
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class ControlClient:
    """Thin typed wrapper of the ``ControlService`` stub."""

    def __init__(
        self, address: str, *, token: str | None = None, tls: ClientTls | None = None
    ) -> None:
        self.address = address
        self._channel = control_channel(
            address,
            token=token,
            tls=tls,
            options=[
                ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
            ],
        )
        self._stub = control_pb2_grpc.ControlServiceStub(self._channel)
        self._routes = RouteCache()
        self._reads_no_paths = False
        """The server refused a path because it reads none (``path_source_roots`` empty)."""

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the control service (health checks use it too)."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

    def with_source(
        self,
        source: SourceLike,
        upload: bool | None,
        progress: ProgressOption,
        timeout: float | None,
        call: Callable[[types.ModelSourceSpec], _T],
    ) -> _T:
        """``call`` with the source as the server gets it. A local path the server does not
        read (outside its ``path_source_roots``, or it has none) is uploaded instead; a server
        that reads no paths at all is remembered, so later paths go to it as uploads at once."""
        if upload is None and self._reads_no_paths:
            upload = True
        spec = self._source_spec(source, upload, progress, timeout)
        try:
            return call(spec)
        except errors.PermissionDeniedError as exc:
            if (
                spec.kind != "path"
                or upload is not None
                or exc.details.get("setting") != "path_source_roots"
            ):
                raise
            # "reads no paths" (no roots), not "not under a root": worth remembering
            self._reads_no_paths = "reads no paths" in exc.message
        return call(self._source_spec(source, True, progress, timeout))

    def _source_spec(
        self,
        source: SourceLike,
        upload: bool | None,
        progress: ProgressOption,
        timeout: float | None,
    ) -> types.ModelSourceSpec:
        interpreted = interpret_source(
            source, upload=upload, server_is_local=is_local_address(self.address)
        )
        if isinstance(interpreted, Upload):
            with progress_callback(progress, "upload") as report:
                upload_id = self.upload(interpreted, timeout=timeout, progress=report)
            return types.ModelSourceSpec(kind="upload_id", value=upload_id)
        return interpreted

    def add_model(
        self,
        source: types.ModelSourceSpec,
        *,
        timeout: float | None,
        progress: ProgressCallback | None = None,
    ) -> tuple[types.ModelInfo, bool]:
        request = control_pb2.AddModelRequest(source=converters.to_pb_source(source))
        with translated_errors():
            for event in self._stub.AddModel(request, timeout=timeout):
                if event.HasField("progress"):
                    if progress is not None:
                        progress(converters.from_pb_progress(event.progress))
                elif event.HasField("result"):
                    return (
                        converters.from_pb_model_info(event.result.model),
                        event.result.created,
                    )
        raise RuntimeError("AddModel ended without a result")  # pragma: no cover - server bug

    def upload(
        self, upload: Upload, *, timeout: float | None, progress: ProgressCallback | None = None
    ) -> str:
        total = upload.size

        def requests() -> Iterator[control_pb2.UploadPackageRequest]:
            yield control_pb2.UploadPackageRequest(
                header=control_pb2.UploadHeader(filename=upload.filename, size_bytes=total)
            )
            done = 0
            for chunk in upload.chunks():
                yield control_pb2.UploadPackageRequest(chunk=chunk)
                done += len(chunk)
                if progress is not None:
                    progress(types.Progress(stage="upload", done=done, total=total))

        with translated_errors():
            return self._stub.UploadPackage(requests(), timeout=timeout).upload_id

    def publish(self, model_id: str, published: bool, *, timeout: float | None) -> str:
        request = control_pb2.PublishModelRequest(model_id=model_id, published=published)
        with translated_errors():
            return self._stub.PublishModel(request, timeout=timeout).model_id

    def list_models(self, *, timeout: float | None) -> list[types.ModelInfo]:
        with translated_errors():
            response = self._stub.ListModels(control_pb2.ListModelsRequest(), timeout=timeout)
        return [converters.from_pb_model_info(m) for m in response.models]

    def describe(self, model_id: str, *, timeout: float | None) -> types.ModelInfo:
        with translated_errors():
            response = self._stub.DescribeModel(
                control_pb2.DescribeModelRequest(model_id=model_id), timeout=timeout
            )
        return converters.from_pb_model_info(response.model)

    def validate(
        self, source: types.ModelSourceSpec, *, perform_io_checks: bool, timeout: float | None
    ) -> types.ValidationReport:
        with translated_errors():
            response = self._stub.ValidateModel(
                control_pb2.ValidateModelRequest(
                    source=converters.to_pb_source(source), perform_io_checks=perform_io_checks
                ),
                timeout=timeout,
            )
        return converters.from_pb_report(response.report)

    def remove(self, model_id: str, *, timeout: float | None) -> types.RemovedModel:
        """Remove the model."""
        with translated_errors():
            response = self._stub.RemoveModel(
                control_pb2.RemoveModelRequest(model_id=model_id), timeout=timeout
            )
        self.forget_routes()
        return types.RemovedModel(
            model_id=response.model_id,
            freed_bytes=response.freed_bytes,
            calls_in_flight=response.calls_in_flight,
        )

    def server_info(self, *, timeout: float | None) -> types.ServerInfo:
        with translated_errors():
            response = self._stub.GetServerInfo(control_pb2.GetServerInfoRequest(), timeout=timeout)
        return converters.from_pb_server_info(response)

    def test(
        self, model_id: str, weight_format: str, device: str, *, timeout: float | None
    ) -> types.ValidationReport:
        with translated_errors():
            response = self._stub.TestModel(
                control_pb2.TestModelRequest(
                    model_id=model_id, weight_format=weight_format, device=device
                ),
                timeout=timeout,
            )
        return converters.from_pb_report(response.report)

    def route(
        self, model_id: str, weight_format: str, device: str, *, timeout: float | None
    ) -> Route:
        """Where the model runs; kept briefly (:class:`~modelrunner.runtime_client.RouteCache`)
        so lockstep calls skip the round trip."""

        def resolve() -> Route:
            with translated_errors():
                response = self._stub.GetModelRoute(
                    control_pb2.GetModelRouteRequest(
                        model_id=model_id, weight_format=weight_format, device=device
                    ),
                    timeout=timeout,
                )
            return Route(response.model_id, tuple(response.flight_uris), response.runtime_id)

        return self._routes.get((model_id, weight_format, device), resolve)

    def kept_route(self, model_id: str, weight_format: str, device: str) -> Route | None:
        """The route kept for the model, if any (no call)."""
        return self._routes.kept((model_id, weight_format, device))

    def forget_routes(self) -> None:
        self._routes.forget()
