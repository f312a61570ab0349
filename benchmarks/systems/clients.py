"""The identity's round trip from each kind of client modelrunner speaks to, against the same
server as the ``modelrunner`` system (whose ``client.predict`` is the Python client's figure):

* tritonclient over the Open Inference Protocol (KServe V2) on the control service's address:
  ``infer`` and stream infer, from the tritonclient-only environment (``triton_venv``), with the
  worker of the Triton system pointed at modelrunner;
* a raw grpcio client of the same protocol (our generated stub, this environment): the
  endpoint's cost without tritonclient's own (its protobuf 6 serializes a 1 MiB request in
  about 3.5 ms here, protobuf 7 in 0.1 ms);
* a raw pyarrow Flight client that knows only the protos and the wire format (one
  ``do_exchange`` per frame, no sessions): what a stranger writes first;
* the Node.js example (``examples/node``, grpc-js + apache-arrow) over Flight and over V2, when
  ``node`` and the example's packages are there; its timings are taken inside node.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc
import numpy as np
import pyarrow as pa
import pyarrow.flight as flight

from modelrunner.client._sources import _zipped
from modelrunner.open_inference import grpc_predict_v2_pb2 as v2
from modelrunner.open_inference import grpc_predict_v2_pb2_grpc as v2_grpc
from modelrunner.runtime_client import reachable_uri
from modelrunner.v1 import runtime_pb2

from ..context import BenchContext
from ..frames import FrameSize, make_frame
from ..modelrunner_server import REPO_ROOT
from ..rounds import (
    IDENTITY,
    LOCKSTEP,
    NODE_FLIGHT,
    NODE_V2,
    OPEN_INFERENCE,
    RAW_FLIGHT,
    RAW_V2,
    UNET2D,
    Case,
)
from ..triton_venv import ensure_tritonclient_venv
from .triton import TritonSkipped, TritonWorker, worker_cases
from .unet2d import find_model, nuclei_test_data, weights_for

logger = logging.getLogger(__name__)

NODE_EXAMPLE = REPO_ROOT / "examples" / "node"


def client_cases(ctx: BenchContext, sizes: list[FrameSize]) -> tuple[list[Case], list[str]]:
    """The cases, and notes on the clients left out."""
    runner = ctx.modelrunner()
    model_id = runner.identity_model()
    runtime = runner.client.server_info().runtimes[0]
    uri = reachable_uri(runtime.flight_uri, runner.address)
    cases = _raw_flight_cases(ctx, uri, model_id, sizes)
    cases += _raw_v2_cases(ctx, runner.address, model_id, sizes)
    notes = []
    try:
        cases += _v2_cases(ctx, runner.address, model_id, sizes)
    except TritonSkipped as e:
        notes.append(f"V2 via tritonclient skipped: {e}")
    node_cases, why = _node_cases(ctx, runner.address, sizes)
    cases += node_cases
    if why:
        notes.append(f"Node.js example skipped: {why}")
    return cases, notes


# -- tritonclient --------------------------------------------------------------------------------


def _v2_cases(ctx: BenchContext, address: str, model_id: str, sizes: list[FrameSize]) -> list[Case]:
    try:
        venv = ensure_tritonclient_venv(log_path=ctx.log_dir / "tritonclient-venv-setup.log")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise TritonSkipped(f"the tritonclient environment could not be set up: {e}") from e
    worker = ctx.stack.enter_context(TritonWorker(venv.python, ctx.log_dir / "v2-client.log"))
    worker.request({"op": "connect", "url": address, "model": model_id, "timeout": 60})
    return worker_cases(ctx, worker, sizes, OPEN_INFERENCE, where=" on the control address")


# -- raw grpcio V2 --------------------------------------------------------------------------------


def _raw_v2_cases(
    ctx: BenchContext, address: str, model_id: str, sizes: list[FrameSize]
) -> list[Case]:
    """The identity at every size, and ``unet2d_nuclei_broad`` on its test input (where the
    model's time dwarfs the transport's)."""
    channel = grpc.insecure_channel(
        address,
        options=[("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)],
    )
    ctx.stack.callback(channel.close)
    stub = v2_grpc.GRPCInferenceServiceStub(channel)
    cases = []
    for size in sizes:
        frame = make_frame(size.shape)
        infer = partial(_v2_infer, stub, model_id, "input", frame, {})
        cases.append(
            Case(
                RAW_V2,
                LOCKSTEP,
                IDENTITY,
                size.label,
                size.nbytes,
                call="grpcio ModelInfer (generated stub)",
                run=partial(_repeat, infer),
                check=partial(_same, infer, frame),
                min_frames=ctx.settings.lockstep_min_frames,
            )
        )
    if ctx.settings.smoke:
        return cases  # unet2d's frames take a quarter of a second each: not for a smoke run
    array, expected, label = nuclei_test_data()
    weights = weights_for(ctx.settings.device)
    unet2d = ctx.modelrunner().add_and_load(find_model(), weights)
    infer = partial(_v2_infer, stub, unet2d, "raw", array, {"weight_format": weights})

    def check() -> None:
        np.testing.assert_allclose(infer(), expected, rtol=1e-4, atol=1e-4)

    cases.append(
        Case(
            RAW_V2,
            LOCKSTEP,
            UNET2D,
            label,
            array.nbytes,
            call="grpcio ModelInfer (generated stub)",
            run=partial(_repeat, infer),
            check=check,
            min_frames=ctx.settings.unet2d_min_frames,
            max_frames=ctx.settings.unet2d_max_frames,
        )
    )
    return cases


def _v2_infer(
    stub: v2_grpc.GRPCInferenceServiceStub,
    model_id: str,
    input_name: str,
    frame: np.ndarray,
    parameters: dict[str, str],
) -> np.ndarray:
    """One ModelInfer; a new request per frame, from the array's bytes (a camera's new frame)."""
    request = v2.ModelInferRequest(
        model_name=model_id,
        inputs=[
            v2.ModelInferRequest.InferInputTensor(
                name=input_name, datatype="FP32", shape=list(frame.shape)
            )
        ],
        raw_input_contents=[frame.tobytes()],
    )
    for key, value in parameters.items():
        request.parameters[key].string_param = value
    response = stub.ModelInfer(request)
    out = response.outputs[0]
    return np.frombuffer(response.raw_output_contents[0], "<f4").reshape(out.shape)


def _repeat(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return time.perf_counter() - start


def _same(call: Callable[[], np.ndarray], frame: np.ndarray) -> None:
    if not np.array_equal(call(), frame):
        raise RuntimeError("the identity gave another frame back")


# -- raw pyarrow Flight --------------------------------------------------------------------------


def _raw_flight_cases(
    ctx: BenchContext, uri: str, model_id: str, sizes: list[FrameSize]
) -> list[Case]:
    client = flight.connect(uri)
    ctx.stack.callback(client.close)
    command = runtime_pb2.PredictCommand(model_id=model_id).SerializeToString()
    cases = []
    for size in sizes:
        frame = make_frame(size.shape)
        predict = partial(_raw_predict, client, command, frame)
        cases.append(
            Case(
                RAW_FLIGHT,
                LOCKSTEP,
                IDENTITY,
                size.label,
                size.nbytes,
                call="pyarrow do_exchange per frame",
                run=partial(_repeat, predict),
                check=partial(_same, predict, frame),
                min_frames=ctx.settings.lockstep_min_frames,
            )
        )
    return cases


def _raw_predict(client: flight.FlightClient, command: bytes, frame: np.ndarray) -> np.ndarray:
    """One sample as docs/wire-format.md describes it, with nothing but pyarrow."""
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(frame.reshape((1, *frame.shape)))
    batch = pa.record_batch([column], names=["input"])
    writer, reader = client.do_exchange(flight.FlightDescriptor.for_command(command))
    with writer:
        writer.begin(batch.schema)
        writer.write_batch(batch)
        writer.done_writing()
        table = reader.read_all()
    return np.asarray(table.column("output").chunk(0).to_numpy_ndarray()[0])


# -- the Node.js example -------------------------------------------------------------------------


def _node_cases(ctx: BenchContext, address: str, sizes: list[FrameSize]) -> tuple[list[Case], str]:
    if ctx.settings.smoke:
        return [], "not in smoke mode (a node process per round; tests/examples runs it)"
    node = shutil.which("node")
    if node is None:
        return [], "node is not on PATH"
    if not (NODE_EXAMPLE / "node_modules" / ".package-lock.json").is_file():
        return [], f"its packages are not installed (npm ci --prefix {NODE_EXAMPLE})"
    package = ctx.workdir / "identity-model"  # built by the modelrunner system's identity_model
    archive = ctx.workdir / "identity-model.zip"
    archive.write_bytes(_zipped(package, compress=False).data or b"")
    cases = []
    for size in sizes:
        frame_path = ctx.workdir / f"node-frame-{size.label}.npy"
        np.save(frame_path, make_frame(size.shape))
        for system, plane in ((NODE_FLIGHT, "flight"), (NODE_V2, "v2")):

            def run(n: int, frame_path: Path = frame_path, plane: str = plane) -> float:
                return _node_round_trips(node, address, archive, frame_path, n)[plane]

            cases.append(
                Case(
                    system,
                    LOCKSTEP,
                    IDENTITY,
                    size.label,
                    size.nbytes,
                    call=f"examples/node/client.mjs, {plane} predict",
                    run=run,
                    min_frames=ctx.settings.lockstep_min_frames,
                )
            )
    return cases, ""


def _node_round_trips(
    node: str, address: str, archive: Path, frame: Path, repeat: int
) -> dict[str, float]:
    """Seconds of ``repeat`` warm round trips on each plane, as timed inside node."""
    done = subprocess.run(
        [
            node,
            "client.mjs",
            address,
            str(archive),
            str(frame),
            str(frame),
            "--repeat",
            str(repeat),
        ],
        cwd=NODE_EXAMPLE,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the Node.js example failed: {done.stderr[-1000:]}")
    results = json.loads(done.stdout.strip().splitlines()[-1])
    return {plane: float(results[plane]["total_ms"]) / 1000 for plane in ("flight", "v2")}
