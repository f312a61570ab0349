"""gRPC channels to a control service, with the caller's token and TLS, for the client and for
runtimes alike.

Over TLS the token travels as gRPC call credentials (``access_token_call_credentials``: the
``authorization: Bearer`` metadata, sent only over the secure channel). gRPC refuses call
credentials on a plaintext channel, so there a small client interceptor adds the same metadata:
that is for servers on loopback, where nothing crosses the network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from modelrunner.auth import AUTHORIZATION_HEADER, bearer
from modelrunner.tls import ClientTls

ChannelOptions = Sequence[tuple[str, Any]]


class _BearerMetadata(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    def __init__(self, token: str) -> None:
        self._entry = (AUTHORIZATION_HEADER, bearer(token))

    def _with_token(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method,
            details.timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._with_token(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._with_token(details), requests)


class _CallDetails(grpc.ClientCallDetails):  # type: ignore[misc]
    def __init__(
        self,
        method: str,
        timeout: float | None,
        metadata: Any,
        credentials: Any,
        wait_for_ready: bool | None,
        compression: Any,
    ) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def control_channel(
    address: str,
    *,
    token: str | None = None,
    tls: ClientTls | None = None,
    options: ChannelOptions = (),
) -> grpc.Channel:
    """A channel to ``address`` that presents ``token`` on every call (when given) and speaks
    TLS (when ``tls`` is given; its roots None means the system's)."""
    if tls is not None:
        credentials = tls.grpc_credentials()
        if token:
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
        return grpc.secure_channel(address, credentials, options=list(options))
    channel = grpc.insecure_channel(address, options=list(options))
    if token:
        return grpc.intercept_channel(channel, _BearerMetadata(token))
    return channel
