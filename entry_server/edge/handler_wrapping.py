"""Rebuilding a gRPC method handler around a wrapped behaviour, whatever its kind (unary or
streaming requests and responses): what both server interceptors need."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

Behavior = Callable[[Any, grpc.ServicerContext], Any]
Wrap = Callable[[Behavior, bool, bool], Behavior]
"""``wrap(behavior, request_streaming, response_streaming)``: the behaviour to serve instead."""

_KEEP: Any = object()


def rewrapped(
    handler: grpc.RpcMethodHandler, wrap: Wrap, *, request_deserializer: Any = _KEEP
) -> grpc.RpcMethodHandler:
    """``handler`` serving ``wrap(its behaviour, ...)``; ``request_deserializer`` replaces its
    own (None: the behaviour gets the request's bytes)."""
    codecs = {
        "request_deserializer": handler.request_deserializer
        if request_deserializer is _KEEP
        else request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(
            wrap(handler.unary_unary, False, False), **codecs
        )
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(
            wrap(handler.unary_stream, False, True), **codecs
        )
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(
            wrap(handler.stream_unary, True, False), **codecs
        )
    return grpc.stream_stream_rpc_method_handler(wrap(handler.stream_stream, True, True), **codecs)
