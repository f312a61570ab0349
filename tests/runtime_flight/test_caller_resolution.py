"""The runtime resolves every model reference as its caller: with the caller's workspace, through
the control service's own resolution, never with the runtime's credential (which sees every
workspace). Attacked with raw Flight calls that skip the control service, where a model of one
workspace carries another workspace's model id (or an alias both use) as its description's id."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.flight as flight
import pytest

from modelrunner import errors
from modelrunner.client import ModelInfo
from modelrunner.transport_errors import from_flight_error
from modelrunner.v1 import control_pb2, runtime_pb2
from modelrunner.wire import SampleDecoder, SampleLayout, encode_sample
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

SHARED_ALIAS = "shared-alias-of-two-labs"


def with_description_id(package: Path, description_id: str) -> Path:
    """The package with ``id: description_id`` in its description (what a writer controls)."""
    (rdf,) = [p for p in package.iterdir() if p.name in ("rdf.yaml", "bioimageio.yaml")]
    text = rdf.read_text()
    assert "\nid:" not in text
    rdf.write_text(text.rstrip("\n") + f"\nid: {description_id}\n")
    return package


@dataclass(frozen=True)
class Collision:
    alice: ModelInfo
    """lab-a's model (1 channel), whose description id is :data:`SHARED_ALIAS`."""
    bob_by_alices_id: ModelInfo
    """lab-b's model (2 channels), whose description id is lab-a's model id."""
    bob_by_alias: ModelInfo
    """lab-b's model (3 channels), whose description id is :data:`SHARED_ALIAS` too."""


@pytest.fixture(scope="module")
def collision(secured: Secured, tmp_path_factory: pytest.TempPathFactory) -> Collision:
    root = tmp_path_factory.mktemp("collision")
    with secured.client("alice") as alice, secured.client("bob") as bob:
        a = alice.add_model(
            with_description_id(
                build_onnx_identity(root / "a", name="alice-aliased"), SHARED_ALIAS
            ),
            upload=True,
        )
        b = bob.add_model(
            with_description_id(build_onnx_identity(root / "b", channels=2, name="bob-b"), a.id),
            upload=True,
        )
        c = bob.add_model(
            with_description_id(
                build_onnx_identity(root / "c", channels=3, name="bob-c"), SHARED_ALIAS
            ),
            upload=True,
        )
    return Collision(alice=a, bob_by_alices_id=b, bob_by_alias=c)


def _uri(secured: Secured) -> str:
    assert secured.server.runtime is not None
    return secured.server.runtime.flight_uri


def _options(secured: Secured, name: str) -> flight.FlightCallOptions:
    token = secured.tokens[name]
    return flight.FlightCallOptions(
        timeout=60, headers=[(b"authorization", f"Bearer {token}".encode())]
    )


def _raw_predict(secured: Secured, name: str, model_ref: str, image: np.ndarray) -> np.ndarray:
    """One prediction on a raw Flight exchange, as a client in another language makes it."""
    command = runtime_pb2.PredictCommand(model_id=model_ref)
    layout = SampleLayout.plan({"input": image}, {"input": ("batch", "channel", "y", "x")})
    with flight.connect(_uri(secured)) as raw:
        writer, reader = raw.do_exchange(
            flight.FlightDescriptor.for_command(command.SerializeToString()),
            _options(secured, name),
        )
        writer.begin(layout.schema())
        for batch in encode_sample(layout, {"input": image}):
            writer.write_batch(batch)
        writer.done_writing()
        decoder: SampleDecoder | None = None
        for chunk in reader:
            if chunk.data is None:
                continue
            decoder = decoder or SampleDecoder(SampleLayout.from_schema(reader.schema))
            samples = decoder.feed(chunk.data)
            if samples:
                writer.close()
                return samples[0]["output"]
    raise AssertionError("no answer")


def _raw_action(secured: Secured, name: str, action: str, body: bytes) -> bytes:
    with flight.connect(_uri(secured)) as raw:
        (result,) = list(raw.do_action(flight.Action(action, body), _options(secured, name)))
    return result.body.to_pybytes()


def _refused(call: object) -> errors.ModelRunnerError:
    try:
        call()  # type: ignore[operator]
    except (flight.FlightError, pa.ArrowException) as exc:
        return from_flight_error(exc)
    raise AssertionError("the call succeeded")


def _image(channels: int) -> np.ndarray:
    return np.arange(channels * 64, dtype="float32").reshape(1, channels, 8, 8)


def test_a_raw_prediction_naming_another_workspaces_id_reaches_the_callers_own_model(
    secured: Secured, collision: Collision
) -> None:
    """Attack: Bob gives his model Alice's model id as its description id and names that id to
    the runtime directly. His 2-channel image must reach his own model; Alice's 1-channel model
    would refuse it (or, given a 1-channel image, answer with Alice's model)."""
    out = _raw_predict(secured, "bob", collision.alice.id, _image(2))
    np.testing.assert_array_equal(out, _image(2))
    error = _refused(lambda: _raw_predict(secured, "bob", collision.alice.id, _image(1)))
    assert isinstance(error, errors.InvalidArgumentError)
    assert "expects 2" in error.message  # his model takes 2 channels
    # the typed client and the control service agree
    with secured.client("bob") as bob:
        assert bob.describe(collision.alice.id).id == collision.bob_by_alices_id.id
        assert bob.predict(collision.alice.id, _image(2))["output"].shape == (1, 2, 8, 8)


def test_load_and_test_actions_resolve_as_the_caller(
    secured: Secured, collision: Collision
) -> None:
    """The same attack through the runtime's load_model and test_model actions."""
    load = runtime_pb2.LoadModelRequest(model_id=collision.alice.id).SerializeToString()
    loaded = runtime_pb2.LoadModelResponse.FromString(
        _raw_action(secured, "bob", "load_model", load)
    )
    assert loaded.model.model_id == collision.bob_by_alices_id.id
    test = control_pb2.TestModelRequest(model_id=collision.alice.id).SerializeToString()
    tested = control_pb2.TestModelResponse.FromString(
        _raw_action(secured, "bob", "test_model", test)
    )
    assert tested.report.id == collision.alice.id, tested.report  # bob-b's description id


def test_an_alias_two_workspaces_use_resolves_to_each_ones_own_model(
    secured: Secured, collision: Collision
) -> None:
    """Alice's own call by her alias is not ambiguous because Bob used it too, and neither
    learns the other's model id from an error."""
    np.testing.assert_array_equal(
        _raw_predict(secured, "alice", SHARED_ALIAS, _image(1)), _image(1)
    )
    np.testing.assert_array_equal(_raw_predict(secured, "bob", SHARED_ALIAS, _image(3)), _image(3))
    for name, other in (("alice", collision.bob_by_alias), ("bob", collision.alice)):
        error = _refused(lambda n=name: _raw_predict(secured, n, SHARED_ALIAS, _image(5)))
        assert isinstance(error, errors.InvalidArgumentError)
        assert other.id[:12] not in error.message and other.id[:12] not in str(error.details)


def test_an_admin_naming_an_ambiguous_alias_is_told_the_matches(
    secured: Secured, collision: Collision
) -> None:
    """An admin sees every workspace: for it the alias is ambiguous, and it may know why."""
    error = _refused(lambda: _raw_predict(secured, "admin", SHARED_ALIAS, _image(1)))
    assert isinstance(error, errors.InvalidArgumentError)
    assert "ambiguous" in error.message
    assert collision.alice.id[:12] in error.message
