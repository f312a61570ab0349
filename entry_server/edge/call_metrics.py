"""Counts and times every control-service call (``modelrunner_requests``,
``modelrunner_request_duration_seconds``, plane ``control``): the innermost interceptor, so it
sees parsed requests and the modelrunner error a call ends with, before the error interceptor
turns it into a status. Calls refused earlier (no valid token, a request that is no protobuf)
are not counted here: the authentication log has them.

Health checks and reflection are not counted (a watch lasts as long as its client).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from modelrunner import errors
from modelrunner.entry_server.edge.handler_wrapping import Behavior, rewrapped
from modelrunner.metrics import LATENCY, REQUESTS, model_label

_UNCOUNTED = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class CallMetricsInterceptor(grpc.ServerInterceptor):
    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_UNCOUNTED):
            return handler
        name = method.rsplit("/", 1)[-1]

        def wrap(behavior: Behavior, request_streaming: bool, response_streaming: bool) -> Behavior:
            return _streaming(behavior, name) if response_streaming else _unary(behavior, name)

        return rewrapped(handler, wrap)


def _unary(behavior: Behavior, method: str) -> Behavior:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Any:
        start = time.perf_counter()
        code, model = "OK", ""
        try:
            response = behavior(request, context)
            # the response names the model as the server resolved it; the request as the
            # caller spelled it (model_label keeps only canonical ids)
            model = _model_of(response) or _model_of(request)
            return response
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            _record(method, model, code, time.perf_counter() - start)

    return wrapper


def _streaming(
    behavior: Behavior, method: str
) -> Callable[[Any, grpc.ServicerContext], Iterator[Any]]:
    def wrapper(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        start = time.perf_counter()
        code, model = "OK", ""
        try:
            for response in behavior(request, context):
                model = model or _model_of(response)
                yield response
            model = model or _model_of(request)
        except GeneratorExit:
            # the client stopped reading: after the last event (AddModel's result) that is
            # how a stream ends; before it, the client gave up
            code = "OK" if model else grpc.StatusCode.CANCELLED.name
            raise
        except BaseException as exc:
            code = _code_of(exc, context)
            raise
        finally:
            _record(method, model, code, time.perf_counter() - start)

    return wrapper


def _record(method: str, model: str, code: str, seconds: float) -> None:
    # a model is named only for calls that succeeded: a client cannot make series of its own
    REQUESTS.labels("control", method, model_label(model) if code == "OK" else "", code).inc()
    LATENCY.labels("control", method).observe(seconds)


def _code_of(exc: BaseException, context: grpc.ServicerContext) -> str:
    if isinstance(exc, errors.ModelRunnerError):
        return exc.code.name
    if not context.is_active():
        return grpc.StatusCode.CANCELLED.name
    code = context.code()  # set when the servicer aborted the call itself
    return code.name if isinstance(code, grpc.StatusCode) else grpc.StatusCode.INTERNAL.name


def _model_of(message: Any) -> str:
    """The model a request or response names: ``model_id`` (control RPCs), ``model_name``
    (Open Inference), a described model's id (DescribeModel), or an added model's id
    (AddModel's last event)."""
    for attr in ("model_id", "model_name"):
        value = getattr(message, attr, None)
        if isinstance(value, str) and value:
            return value
    result = getattr(message, "result", None)
    for holder in (getattr(result, "model", None), getattr(message, "model", None)):
        value = getattr(holder, "id", None)
        if isinstance(value, str) and value:
            return value
    return ""
