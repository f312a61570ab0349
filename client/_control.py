"""Calls to the control service (gRPC)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import grpc

from modelrunner import converters, types
from modelrunner.channels import control_channel
from modelrunner.tls import ClientTls
from modelrunner.v1 import control_pb2, control_pb2_grpc

from ._errors import translated_errors
from ._sources import Upload

ProgressCallback = Callable[[types.Progress], None]
_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
ROUTE_TTL_S = 30.0


@dataclass(frozen=True)
class Route:
    model_id: str
    flight_uris: tuple[str, ...]
    runtime_id: str


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
        self._routes: dict[tuple[str, str, str], tuple[float, Route]] = {}
        self._routes_lock = threading.Lock()

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the control service (health checks use it too)."""
        return self._channel

    def close(self) -> None:
        self._channel.close()

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

    def remove(self, model_id: str, *, timeout: float | None) -> str:
        """Remove the model; returns its full id."""
        with translated_errors():
            response = self._stub.RemoveModel(
                control_pb2.RemoveModelRequest(model_id=model_id), timeout=timeout
            )
        self.forget_routes()
        return response.model_id

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
        """Where the model runs; cached briefly so lockstep calls skip the round trip."""
        key = (model_id, weight_format, device)
        now = time.monotonic()
        with self._routes_lock:
            cached = self._routes.get(key)
            if cached is not None and now - cached[0] < ROUTE_TTL_S:
                return cached[1]
        with translated_errors():
            response = self._stub.GetModelRoute(
                control_pb2.GetModelRouteRequest(
                    model_id=model_id, weight_format=weight_format, device=device
                ),
                timeout=timeout,
            )
        route = Route(response.model_id, tuple(response.flight_uris), response.runtime_id)
        with self._routes_lock:
            self._routes[key] = (now, route)
        return route

    def forget_routes(self) -> None:
        with self._routes_lock:
            self._routes.clear()
