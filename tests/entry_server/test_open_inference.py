"""The Open Inference Protocol (KServe V2) endpoint from a plain grpcio client built from our
``grpc_predict_v2.proto``: results equal to Flight's, the protocol's datatypes and contents,
parameters, streams, workspaces and tokens, and a refusal with the right status code for every
malformed or hostile request."""

from __future__ import annotations

import queue
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest

from modelrunner.auth import Role
from modelrunner.client import ModelRunnerClient
from modelrunner.entry_server.server import start_control_server
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.serving import RunningServer, start_embedded, start_runtime
from modelrunner.settings import Settings
from modelrunner.types import ModelInfo
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

Input = v2.ModelInferRequest.InferInputTensor


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[v2_grpc.GRPCInferenceServiceStub]:
    with grpc.insecure_channel(
        server.address, options=[("grpc.max_send_message_length", 128 * 1024**2)]
    ) as channel:
        yield v2_grpc.GRPCInferenceServiceStub(channel)


def _request(
    model: str, array: np.ndarray, name: str = "input", **fields: object
) -> v2.ModelInferRequest:
    datatype = {"float32": "FP32", "float16": "FP16", "uint8": "UINT8", "float64": "FP64"}
    return v2.ModelInferRequest(
        model_name=model,
        inputs=[Input(name=name, datatype=datatype[str(array.dtype)], shape=list(array.shape))],
        raw_input_contents=[array.tobytes()],
        **fields,  # type: ignore[arg-type]
    )


def _output(response: v2.ModelInferResponse, i: int = 0) -> np.ndarray:
    tensor = response.outputs[i]
    dtype = {"FP32": "<f4", "FP64": "<f8"}[tensor.datatype]
    return np.frombuffer(response.raw_output_contents[i], dtype).reshape(tensor.shape)


def _refused(call: object, request: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call(request)  # type: ignore[operator]
    return info.value


def _frame(seed: int, shape: tuple[int, ...] = (1, 1, 33, 47)) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


# -- what works ------------------------------------------------------------------------------------


def test_infer_gives_what_flight_predict_gives(
    stub: v2_grpc.GRPCInferenceServiceStub, client: ModelRunnerClient, identity: ModelInfo
) -> None:
    x = _frame(0)
    response = stub.ModelInfer(_request(identity.id, x, id="frame-7"))
    assert response.model_name == identity.id
    assert response.id == "frame-7"
    assert [(o.name, o.datatype, list(o.shape)) for o in response.outputs] == [
        ("output", "FP32", [1, 1, 33, 47])
    ]
    assert response.outputs[0].parameters["dim_names"].string_param == "batch,channel,y,x"
    np.testing.assert_array_equal(_output(response), client.predict(identity.id, x)["output"])
    np.testing.assert_array_equal(_output(response), x)


def test_a_model_is_named_by_a_prefix_of_its_id(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    response = stub.ModelInfer(_request(identity.id[:10], _frame(1)))
    assert response.model_name == identity.id


def test_typed_contents_stand_in_for_raw_bytes(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    x = _frame(2, (1, 1, 4, 5))
    request = v2.ModelInferRequest(
        model_name=identity.id,
        inputs=[
            Input(
                name="input",
                datatype="FP32",
                shape=[1, 1, 4, 5],
                contents=v2.InferTensorContents(fp32_contents=x.ravel().tolist()),
            )
        ],
    )
    np.testing.assert_array_equal(_output(stub.ModelInfer(request)), x)


def test_a_two_dimensional_image_gets_the_models_batch_and_channel_axes(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    x = _frame(3, (20, 30))
    response = stub.ModelInfer(_request(identity.id, x))
    assert list(response.outputs[0].shape) == [1, 1, 20, 30]
    np.testing.assert_array_equal(_output(response)[0, 0], x)


def test_dim_names_put_the_axes_in_the_models_order(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    x = _frame(4, (1, 12, 10, 1))
    request = _request(identity.id, x)
    request.inputs[0].parameters["dim_names"].string_param = "batch,y,x,channel"
    response = stub.ModelInfer(request)
    np.testing.assert_array_equal(_output(response), x.transpose(0, 3, 1, 2))


def test_parameters_choose_how_the_sample_is_computed(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    x = _frame(5)
    request = _request(identity.id, x)
    request.parameters["weight_format"].string_param = "onnx"
    request.parameters["device"].string_param = "cpu"
    request.parameters["reference_path"].bool_param = True
    request.parameters["blocksize"].int64_param = 0
    request.parameters["priority"].uint64_param = 1  # tritonclient's: accepted, not used
    np.testing.assert_array_equal(_output(stub.ModelInfer(request)), x)


def test_only_the_outputs_asked_for_come_back(
    stub: v2_grpc.GRPCInferenceServiceStub, client: ModelRunnerClient, tiny: object
) -> None:
    info = client.add_model(tiny("two_inputs"))  # type: ignore[operator]
    x = _frame(6, (1, 1, 16, 16))
    request = v2.ModelInferRequest(
        model_name=info.id,
        inputs=[Input(name=t.id, datatype="FP32", shape=[1, 1, 16, 16]) for t in info.inputs],
        raw_input_contents=[x.tobytes() for _ in info.inputs],
        outputs=[v2.ModelInferRequest.InferRequestedOutputTensor(name=info.outputs[-1].id)],
    )
    response = stub.ModelInfer(request)
    assert [o.name for o in response.outputs] == [info.outputs[-1].id]


def test_metadata_and_readiness(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    assert stub.ServerLive(v2.ServerLiveRequest()).live
    assert stub.ServerReady(v2.ServerReadyRequest()).ready
    server = stub.ServerMetadata(v2.ServerMetadataRequest())
    assert server.name == "modelrunner"
    assert "model_stream_infer" in server.extensions
    assert stub.ModelReady(v2.ModelReadyRequest(name=identity.id)).ready
    assert not stub.ModelReady(v2.ModelReadyRequest(name="0" * 64)).ready
    metadata = stub.ModelMetadata(v2.ModelMetadataRequest(name=identity.id))
    assert metadata.name == identity.id
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input", "FP32", [-1, 1, -1, -1])
    ]
    assert [t.name for t in metadata.outputs] == ["output"]


def test_a_stream_answers_every_request_in_order_and_survives_a_bad_one(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    frames = [_frame(10), _frame(11, (1, 3, 8, 8)), _frame(12)]
    requests = [_request(identity.id, f, id=str(i)) for i, f in enumerate(frames)]
    answers = list(stub.ModelStreamInfer(iter(requests)))
    assert [a.infer_response.id for a in answers] == ["0", "1", "2"]
    assert answers[0].error_message == answers[2].error_message == ""
    assert answers[1].error_message.startswith("[INVALID_ARGUMENT] input 'input' has 3 channel")
    np.testing.assert_array_equal(_output(answers[2].infer_response), frames[2])


# -- refusals --------------------------------------------------------------------------------------


def test_unknown_models_and_versions_are_not_found(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    e = _refused(stub.ModelInfer, _request("no-such-model", _frame(0)))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = _refused(stub.ModelInfer, _request(identity.id, _frame(0), model_version="99"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    assert "has no version '99'" in e.details()
    e = _refused(stub.ModelMetadata, v2.ModelMetadataRequest(name="no-such-model"))
    assert e.code() == grpc.StatusCode.NOT_FOUND
    e = _refused(stub.ModelInfer, _request("", _frame(0)))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_tensor_the_model_cannot_take_is_invalid_argument(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    e = _refused(stub.ModelInfer, _request(identity.id, _frame(0, (1, 3, 8, 8))))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        e.details() == "input 'input' has 3 channel(s) on axis 'channel', the model expects 1 (c0)"
    )
    nan = _frame(0)
    nan[0, 0, 1, 1] = np.nan
    e = _refused(stub.ModelInfer, _request(identity.id, nan))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "NaN" in e.details()


@pytest.mark.parametrize(
    ("attack", "edit", "message"),
    [
        (
            "raw bytes shorter than the shape says",
            lambda r: r.raw_input_contents.__setitem__(0, b"\0" * 12),
            "input 'input': shape [1, 1, 33, 47] of FP32 is 6204 bytes, but its raw_input_contents hold 12",
        ),
        (
            "a shape whose product overflows (allocation bomb)",
            lambda r: r.inputs[0].shape.extend([2**40, 2**40]),
            "is more than 64 MiB, the most one request carries",
        ),
        (
            "an empty shape of huge sizes (numpy cannot make it)",
            lambda r: (
                r.inputs[0].ClearField("shape"),
                r.inputs[0].shape.extend([0, 2**62, 2**62]),
            ),
            "is more than 64 MiB, the most one request carries",
        ),
        (
            "more axes than numpy holds",
            lambda r: r.inputs[0].shape.extend([1] * 70),
            "input 'input': shape has 74 axes, at most 32 are taken",
        ),
        (
            "a blocksize beyond int64",
            lambda r: r.parameters["blocksize"].MergeFrom(v2.InferParameter(uint64_param=2**63)),
            "parameter 'blocksize' is 9223372036854775808, more than an int64 holds",
        ),
        (
            "BOOL bytes that are no booleans",
            lambda r: (
                setattr(r.inputs[0], "datatype", "BOOL"),
                r.raw_input_contents.__setitem__(0, b"\x07" * 1551),
            ),
            "input 'input': BOOL values must be the bytes 0 or 1",
        ),
        (
            "a negative size",
            lambda r: r.inputs[0].shape.__setitem__(2, -1),
            "input 'input': shape [1, 1, -1, 47] has a negative size",
        ),
        (
            "a datatype modelrunner cannot compute with",
            lambda r: setattr(r.inputs[0], "datatype", "BYTES"),
            "input 'input': datatype 'BYTES' is not one modelrunner takes",
        ),
        (
            "more raw entries than inputs",
            lambda r: r.raw_input_contents.append(b"\0"),
            "the request has 1 inputs but 2 raw_input_contents",
        ),
        (
            "the same input twice",
            lambda r: (
                r.inputs.append(r.inputs[0]),
                r.raw_input_contents.append(r.raw_input_contents[0]),
            ),
            "input 'input' is given twice",
        ),
        (
            "a misspelt parameter",
            lambda r: r.parameters["weight_fromat"].MergeFrom(
                v2.InferParameter(string_param="onnx")
            ),
            "unknown parameter 'weight_fromat'",
        ),
        (
            "a parameter of the wrong type",
            lambda r: r.parameters["blocksize"].MergeFrom(v2.InferParameter(string_param="big")),
            "parameter 'blocksize' takes an int64_param, got string_param",
        ),
        (
            "a weight format the model does not have",
            lambda r: r.parameters["weight_format"].MergeFrom(
                v2.InferParameter(string_param="keras_v3")
            ),
            "has no keras_v3 weights",
        ),
        (
            "an output the model does not have",
            lambda r: r.outputs.add(name="secret"),
            "has no output 'secret'",
        ),
        (
            "dim_names that do not fit the shape",
            lambda r: (
                r.inputs[0].parameters["dim_names"].MergeFrom(v2.InferParameter(string_param="y,x"))
            ),
            "dim_names 'y,x' names 2 axes, the shape has 4",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and " " in v else "",
)
def test_malformed_requests_are_invalid_argument(
    stub: v2_grpc.GRPCInferenceServiceStub,
    identity: ModelInfo,
    attack: str,
    edit: object,
    message: str,
) -> None:
    request = _request(identity.id, _frame(0))
    edit(request)  # type: ignore[operator]
    e = _refused(stub.ModelInfer, request)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, attack
    assert message in e.details(), e.details()


def test_typed_contents_that_do_not_fill_the_shape_are_refused_unallocated(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    """Attacks an allocation bomb: a shape of 2**60 values with three values sent."""
    request = v2.ModelInferRequest(
        model_name=identity.id,
        inputs=[
            Input(
                name="input",
                datatype="FP32",
                shape=[1, 1, 2**30, 2**30],
                contents=v2.InferTensorContents(fp32_contents=[1, 2, 3]),
            )
        ],
    )
    e = _refused(stub.ModelInfer, request)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "is more than 64 MiB, the most one request carries" in e.details()


def test_garbage_bytes_are_invalid_argument(server: RunningServer) -> None:
    """Attacks the parser: bytes that are no ModelInferRequest."""
    with grpc.insecure_channel(server.address) as channel:
        call = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        with pytest.raises(grpc.RpcError) as info:
            call(b"\xff\xff\xff\xff")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ModelInfer: the request is not a valid protobuf message" in info.value.details()


def test_a_request_over_the_message_limit_is_resource_exhausted(
    stub: v2_grpc.GRPCInferenceServiceStub, identity: ModelInfo
) -> None:
    """Attacks memory: 65 MiB in one message (the control service takes 64 MiB)."""
    x = np.zeros((1, 1, 4096, 4160), np.float32)
    e = _refused(stub.ModelInfer, _request(identity.id, x))
    assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_a_stream_that_sends_nothing_is_ended(tmp_path: Path) -> None:
    """Attacks the stream slots: a client that opens streams and never sends a request."""
    settings = Settings(
        host="127.0.0.1", port=0, cache_dir=tmp_path, infer_stream_idle_timeout_s=0.5
    )
    held: queue.Queue[v2.ModelInferRequest | None] = queue.Queue()

    def requests() -> Iterator[v2.ModelInferRequest]:
        while (item := held.get()) is not None:
            yield item

    with (
        start_control_server(settings) as control,
        grpc.insecure_channel(control.address) as channel,
    ):
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        try:
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(requests(), timeout=30))
        finally:
            held.put(None)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert "infer_stream_idle_timeout_s" in info.value.details()


def test_streams_over_their_limit_are_refused(tmp_path: Path) -> None:
    """Attacks the thread pool: every open stream holds a thread of the control service."""
    settings = Settings(
        host="127.0.0.1", port=0, cache_dir=tmp_path, max_concurrent_infer_streams=1
    )
    with (
        start_control_server(settings) as control,
        grpc.insecure_channel(control.address) as channel,
    ):
        stub = v2_grpc.GRPCInferenceServiceStub(channel)
        held: queue.Queue[v2.ModelInferRequest | None] = queue.Queue()

        def requests() -> Iterator[v2.ModelInferRequest]:
            while (item := held.get()) is not None:
                yield item

        first = stub.ModelStreamInfer(requests())
        try:
            # an answer on the first stream: its handler runs and holds the one slot
            held.put(_request("no-such-model", _frame(0), id="probe"))
            probe = next(first)
            assert probe.infer_response.id == "probe"
            assert probe.error_message.startswith("[NOT_FOUND]")
            with pytest.raises(grpc.RpcError) as info:
                list(stub.ModelStreamInfer(iter([]), timeout=30))
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "max_concurrent_infer_streams" in info.value.details()
        finally:
            held.put(None)
            first.cancel()


# -- tokens and workspaces -------------------------------------------------------------------------


def test_tokens_and_workspaces_apply(secured: Secured, tiny: object) -> None:
    with secured.client("alice") as alice:
        info = alice.add_model(tiny("onnx"))  # type: ignore[operator]
    x = _frame(20)
    with grpc.insecure_channel(secured.address) as channel:
        stub = v2_grpc.GRPCInferenceServiceStub(channel)

        def as_(name: str | None) -> list[tuple[str, str]]:
            return [("authorization", f"Bearer {secured.tokens[name]}")] if name else []

        assert stub.ServerLive(v2.ServerLiveRequest()).live  # open, as health checks are
        assert stub.ServerReady(v2.ServerReadyRequest()).ready
        with pytest.raises(grpc.RpcError) as info_:
            stub.ModelInfer(_request(info.id, x))
        assert info_.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # alan reads in alice's workspace; the runtime checks the token the control service
        # forwards, as it would alan's own
        got = stub.ModelInfer(_request(info.id, x), metadata=as_("alan"))
        np.testing.assert_array_equal(_output(got), x)
        with pytest.raises(grpc.RpcError) as info_:
            stub.ModelInfer(_request(info.id, x), metadata=as_("bob"))
        assert info_.value.code() == grpc.StatusCode.NOT_FOUND
        assert not stub.ModelReady(v2.ModelReadyRequest(name=info.id), metadata=as_("bob")).ready
        with pytest.raises(grpc.RpcError) as info_:
            stub.ModelInfer(_request(info.id, x), metadata=as_("runtime"))
        assert info_.value.code() == grpc.StatusCode.PERMISSION_DENIED


# -- a runtime in another process: the request goes on over Flight -------------------------------


def test_a_stand_alone_runtime_is_called_over_flight_with_the_callers_token(
    tmp_path: Path,
) -> None:
    """The embedded runtime is called in process; any other over Flight, presenting the
    caller's own token, which that runtime checks itself (a revoked token stops working there
    too, once the control service's view of it is gone)."""
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path / "control",
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        auth=True,
    )
    store = TokenStore(settings.effective_tokens_file)
    runtime_token, _ = store.create("gpu-1", Role.RUNTIME, "default")
    user_token, _ = store.create("dana", Role.WRITE, "lab-d")
    runtime_settings = Settings(
        host="127.0.0.1",
        flight_port=0,
        cache_dir=tmp_path / "runtime",
        heartbeat_interval_s=1.0,
        auth=True,
        auth_cache_s=0.0,
        runtime_token=runtime_token,
    )
    with start_embedded(settings, with_runtime=False) as running:
        runtime = start_runtime(runtime_settings, running.address)
        try:
            package = build_onnx_identity(tmp_path / "m", name="remote-identity")
            with ModelRunnerClient(running.address, token=user_token, timeout=60) as dana:
                info = dana.add_model(package, upload=True)
            metadata = [("authorization", f"Bearer {user_token}")]
            x = _frame(30)
            with grpc.insecure_channel(running.address) as channel:
                stub = v2_grpc.GRPCInferenceServiceStub(channel)
                for _ in range(2):  # the second on the session the first opened
                    got = stub.ModelInfer(_request(info.id, x), metadata=metadata)
                    np.testing.assert_array_equal(_output(got), x)
                answers = list(
                    stub.ModelStreamInfer(
                        iter([_request(info.id, x, id="a"), _request(info.id, x, id="b")]),
                        metadata=metadata,
                    )
                )
                assert [a.infer_response.id for a in answers] == ["a", "b"]
                e = _refused(
                    lambda r: stub.ModelInfer(r, metadata=metadata),
                    _request(info.id, _frame(0, (1, 3, 8, 8))),
                )
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "has 3 channel(s)" in e.details()
                store.revoke("dana")
                e = _refused(lambda r: stub.ModelInfer(r, metadata=metadata), _request(info.id, x))
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED
        finally:
            runtime.stop()
