"""A frame stream refused mid-way (its model removed, its token revoked) whose client then
sends nothing for longer than the runtime used to wait: the runtime stays up, and the client
gets the typed error.

The runtime used to end such a call after at most 5 s while its frame-reader thread was still
inside a read of the call's stream; pyarrow then aborted the whole process ("pure virtual method
called", status 134). So these tests run the server in a process of its own (``modelrunner
serve --auth``), whose survival they check, with a frame source or a raw Flight client that
pauses :data:`PAUSE_S` after the refused frame.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.settings import Settings
from modelrunner.transport_errors import ErrorTrailers, from_flight_error
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import SampleLayout, encode_sample
from tests.tiny_models import build_onnx_identity

IMAGE = np.arange(64, dtype="float32").reshape(1, 1, 8, 8)
PAUSE_S = 6.5
"""Longer than the 5 s the runtime used to wait for its frame reader before returning."""
STARTUP_S = 120.0
SERVE = ("serve", "--auth", "--host", "127.0.0.1", "--port", "0", "--flight-port", "0")

_names = iter(range(10**6))


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    address: str
    flight_uri: str
    store: TokenStore
    admin: str

    def alive(self) -> bool:
        return self.process.poll() is None

    def client(self, token: str | None = None) -> ModelRunnerClient:
        return ModelRunnerClient(self.address, token=token or self.admin, timeout=60)

    def token(self, role: Role = Role.READ) -> tuple[str, str]:
        name = f"refused-{next(_names)}"
        return self.store.create(name, role, "default")[0], name


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``modelrunner serve --auth`` in a process of its own."""
    cache = tmp_path_factory.mktemp("refused-streams")
    store = TokenStore(Settings(cache_dir=cache).effective_tokens_file)
    admin = store.create("admin", Role.ADMIN, "default")[0]
    env = {
        **os.environ,
        "MODELRUNNER_CACHE_DIR": str(cache),
        "MODELRUNNER_GRACE_PERIOD_S": "1",
        "MODELRUNNER_DESCRIPTION_WORKERS": "0",
        "MODELRUNNER_PATH_SOURCE_ROOTS": "[]",
    }
    stderr = cache.parent / "refused-streams-stderr.txt"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "modelrunner.cli", *SERVE],
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=env,
        )
    try:
        line = _ready_line(process, stderr)
        # "modelrunner ready: control service HOST:PORT, runtime grpc://HOST:PORT"
        address = line.split("control service ", 1)[1].split(",", 1)[0]
        uri = line.split("runtime ", 1)[1].strip()
        yield Served(process, address, uri, store, admin)
        assert process.poll() is None, stderr.read_text()[-3000:]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def _ready_line(process: subprocess.Popen[bytes], stderr: Path) -> str:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline and process.poll() is None:
        for line in stderr.read_text(errors="replace").splitlines():
            if line.startswith("modelrunner ready: "):
                return line
        time.sleep(0.05)
    raise AssertionError(f"no ready line; stderr:\n{stderr.read_text()[-3000:]}")


def _model(served: Served, tmp_path: Path) -> ModelInfo:
    name = f"refused-{next(_names)}"
    with served.client() as admin:
        info = admin.add_model(build_onnx_identity(tmp_path / name, name=name), upload=True)
        admin.load(info.id)
    return info


def _still_serving(served: Served, model_id: str) -> None:
    assert served.alive(), "the server process died"
    with served.client() as admin:
        out = admin.predict(model_id, IMAGE)
    np.testing.assert_array_equal(out["output"].reshape(IMAGE.shape), IMAGE)


def test_a_stream_whose_model_is_removed_while_its_frames_pause_ends_with_not_found(
    served: Served, tmp_path: Path
) -> None:
    """Attack: a time-lapse stream (the Python client) whose model is removed after its first
    answer; its next frame is refused and the one after comes :data:`PAUSE_S` later."""
    model = _model(served, tmp_path)
    kept = _model(served, tmp_path)
    reader_token, _ = served.token()
    was_removed = threading.Event()
    paused: list[float] = []

    def frames() -> Iterator[np.ndarray]:
        yield IMAGE
        assert was_removed.wait(30)
        yield IMAGE  # refused
        paused.append(time.monotonic())
        time.sleep(PAUSE_S)  # the next acquisition
        yield IMAGE

    answered = 0
    with served.client(reader_token) as user, served.client() as admin:
        with pytest.raises(errors.ModelNotFoundError) as caught:
            for _ in user.predict_stream(model.id, frames()):
                answered += 1
                admin.remove_model(model.id)
                was_removed.set()
        refused_at = time.monotonic()
    assert answered == 1
    assert "was removed" in caught.value.message
    # the end notice ended the stream at once, not at the next frame
    assert paused and refused_at - paused[0] < PAUSE_S
    time.sleep(max(0.0, paused[0] + PAUSE_S + 0.5 - time.monotonic()))
    _still_serving(served, kept.id)


def _raw_stream(served: Served, token: str, model_id: str) -> tuple[object, object]:
    raw = flight.connect(served.flight_uri, middleware=[ErrorTrailers()])
    command = runtime_pb2.PredictCommand(model_id=model_id, stream=True)
    options = flight.FlightCallOptions(
        timeout=60, headers=[(b"authorization", f"Bearer {token}".encode())]
    )
    writer, reader = raw.do_exchange(
        flight.FlightDescriptor.for_command(command.SerializeToString()), options
    )
    writer.begin(LAYOUT.schema())
    return writer, reader


LAYOUT = SampleLayout.plan({"input": IMAGE}, {})


def _send_frame(writer: flight.FlightStreamWriter) -> None:
    for batch in encode_sample(LAYOUT, {"input": IMAGE}):
        writer.write_batch(batch)


def _status(call: object) -> errors.ModelRunnerError:
    try:
        call()  # type: ignore[operator]
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call ended without an error")


@pytest.mark.parametrize("then", ["ends its side", "sends another frame"])
def test_a_raw_stream_whose_token_is_revoked_gets_an_end_notice_and_the_runtime_lives(
    served: Served, tmp_path: Path, then: str
) -> None:
    """Attack: a raw Flight stream whose token is revoked after its first answer sends one
    more frame, reads the runtime's answer (the end notice), keeps the stream open and silent
    for :data:`PAUSE_S`, then ends its side, or, a client that does not know the notice,
    sends another frame."""
    model = _model(served, tmp_path)
    token, name = served.token()
    writer, reader = _raw_stream(served, token, model.id)
    _send_frame(writer)
    assert reader.read_chunk().data is not None
    served.store.revoke(name)
    time.sleep(1.2)  # auth_cache_s: rights are asked again at most every second
    _send_frame(writer)
    notice = reader.read_chunk()
    assert notice.data is None
    result = runtime_pb2.FrameResult.FromString(notice.app_metadata.to_pybytes())
    assert result.frame == -1
    assert (result.error.code, result.error.type) == ("UNAUTHENTICATED", "UnauthenticatedError")
    time.sleep(PAUSE_S)
    assert served.alive(), "the server process died"
    if then == "ends its side":
        writer.done_writing()
    else:
        _send_frame(writer)
    error = _status(reader.read_chunk)
    assert isinstance(error, errors.UnauthenticatedError), error
    try:
        writer.close()
    except (flight.FlightError, pa.ArrowException):
        pass  # the call ended with its error already
    _still_serving(served, model.id)
