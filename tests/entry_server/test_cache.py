"""The cache across restarts: index reload and rebuild, staging clean-up, corruption, eviction."""

from __future__ import annotations

import re
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest

from modelrunner import converters, errors, types
from modelrunner.entry_server import ModelRegistry, control_plane
from modelrunner.entry_server.packages.content_hash import hash_package
from modelrunner.v1 import control_pb2, models_pb2
from tests.entry_server.conftest import Running, ServerFactory, make_settings
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    MULTI,
    NUCLEI,
    add_model,
    expect_rpc_error,
)

NUCLEI_ID = hash_package(NUCLEI)[0] if NUCLEI.is_dir() else ""  # tests.zoo skips its users


def _ids(control: Running) -> list[str]:
    return [m.id for m in control.stub.ListModels(control_pb2.ListModelsRequest()).models]


def _fetch(control: Running, model_id: str) -> bytes:
    parts = list(
        control.stub.FetchModelPackage(control_pb2.FetchModelPackageRequest(model_id=model_id))
    )
    return b"".join(p.chunk for p in parts[1:])


def test_models_survive_a_restart(start_server: ServerFactory, tmp_path: Path) -> None:
    first = start_server()
    model = add_model(first.stub, path=str(NUCLEI))[0].model
    start_server.stop(first)
    second = start_server(first.cache_dir)
    listed = second.stub.ListModels(control_pb2.ListModelsRequest()).models
    assert [m.id for m in listed] == [model.id]
    assert listed[0].source == str(NUCLEI)
    assert listed[0].added_at == model.added_at
    described = second.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id))
    assert converters.from_pb_model_info(described.model).input("raw").test_shape == (
        1,
        1,
        512,
        512,
    )


@pytest.mark.parametrize("damage", ["delete", "garbage"])
def test_a_lost_or_unreadable_index_is_rebuilt_from_the_models(
    start_server: ServerFactory, damage: str
) -> None:
    first = start_server()
    model = add_model(first.stub, path=str(NUCLEI))[0].model
    add_model(first.stub, path=str(CAREAMICS_ZIP))
    start_server.stop(first)
    index = first.cache_dir / "index.sqlite"
    for extra in first.cache_dir.glob("index.sqlite-*"):
        extra.unlink()
    if damage == "delete":
        index.unlink()
    else:
        index.write_bytes(b"this is not a database" * 100)
    second = start_server(first.cache_dir)
    listed = second.stub.ListModels(control_pb2.ListModelsRequest()).models
    assert len(listed) == 2
    rebuilt = next(m for m in listed if m.id == model.id)
    assert (rebuilt.name, rebuilt.size_bytes, rebuilt.source) == (model.name, model.size_bytes, "")
    assert list(rebuilt.weight_formats) == ["onnx", "torchscript"]
    if damage == "garbage":
        assert (first.cache_dir / "index.sqlite.unreadable").is_file()


def test_an_unindexed_folder_whose_content_does_not_match_its_name_is_dropped(
    start_server: ServerFactory,
) -> None:
    first = start_server()
    add_model(first.stub, path=str(NUCLEI))
    start_server.stop(first)
    stray = first.cache_dir / "models" / ("f" * 64)
    shutil.copytree(first.cache_dir / "models" / NUCLEI_ID, stray)
    second = start_server(first.cache_dir)
    assert _ids(second) == [NUCLEI_ID]
    assert not stray.exists()


def test_stale_staging_leftovers_are_removed_at_start(start_server: ServerFactory) -> None:
    first = start_server()
    start_server.stop(first)
    leftover = first.cache_dir / "tmp" / "folder-0123" / "weights.onnx"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half written")
    start_server(first.cache_dir)
    assert list((first.cache_dir / "tmp").iterdir()) == []


def test_a_modified_file_is_reported_corrupt_when_first_served(
    start_server: ServerFactory,
) -> None:
    first = start_server()
    add_model(first.stub, path=str(NUCLEI))
    start_server.stop(first)
    weights = first.cache_dir / "models" / NUCLEI_ID / "weights.onnx"
    data = bytearray(weights.read_bytes())
    data[1000] ^= 0xFF  # same size: only the full hash can tell
    weights.write_bytes(bytes(data))

    second = start_server(first.cache_dir)
    # Metadata still answers; serving the package does not.
    second.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=NUCLEI_ID))
    expected = (
        f"model {NUCLEI_ID} is corrupt: file 'weights.onnx' does not match its sha256; remove "
        "it, or add its package again to repair it"
    )
    for _ in range(2):  # the second time from the mark in the index
        message = expect_rpc_error(
            lambda: _fetch(second, NUCLEI_ID),
            grpc.StatusCode.FAILED_PRECONDITION,
            "CorruptModelError",
        )
        assert message == expected

    # Adding the package again repairs the entry.
    result, _ = add_model(second.stub, path=str(NUCLEI))
    assert (result.model.id, result.created) == (NUCLEI_ID, True)
    assert len(_fetch(second, NUCLEI_ID)) > 0


def test_a_truncated_file_is_found_at_start(start_server: ServerFactory) -> None:
    first = start_server()
    add_model(first.stub, path=str(NUCLEI))
    start_server.stop(first)
    weights = first.cache_dir / "models" / NUCLEI_ID / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:100])
    second = start_server(first.cache_dir)
    expect_rpc_error(
        lambda: second.stub.GetModelRoute(control_pb2.GetModelRouteRequest(model_id=NUCLEI_ID)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "CorruptModelError",
        "file 'weights.pt' has 100 bytes, expected 1871121",
    )


def test_verify_on_demand(tmp_path: Path) -> None:
    registry = ModelRegistry(make_settings(tmp_path / "cache"))
    try:
        info, _ = registry.add(types.ModelSourceSpec(kind="path", value=str(MULTI)))
        assert registry.verify(info.id[:8]) == info.id
        (tmp_path / "cache" / "models" / info.id / "documentation.md").write_text("changed!!!!")
        with pytest.raises(
            errors.CorruptModelError, match=re.escape("'documentation.md' has 11 bytes")
        ):
            registry.verify(info.id)
        (tmp_path / "cache" / "models" / info.id / "extra.txt").write_text("x")
        (tmp_path / "cache" / "models" / info.id / "documentation.md").write_bytes(
            (MULTI / "documentation.md").read_bytes()
        )
        with pytest.raises(
            errors.CorruptModelError, match=re.escape("unexpected file 'extra.txt'")
        ):
            registry.verify(info.id)
    finally:
        registry.close()


def _size(path: Path) -> int:
    if path.is_file():
        import zipfile

        with zipfile.ZipFile(path) as zf:
            return sum(i.file_size for i in zf.infolist())
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _budget_for_two_of_three() -> int:
    """Fits careamics + multi + nuclei minus the smallest (careamics) one."""
    n2v, multi, nuclei = _size(CAREAMICS_ZIP), _size(MULTI), _size(NUCLEI)
    assert n2v < multi < nuclei
    return multi + nuclei + n2v // 2


def test_least_recently_used_models_are_evicted(start_server: ServerFactory) -> None:
    control = start_server(cache_budget_bytes=_budget_for_two_of_three())
    n2v = add_model(control.stub, path=str(CAREAMICS_ZIP))[0].model
    multi = add_model(control.stub, path=str(MULTI))[0].model
    # Using n2v makes multi the least recently used.
    control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=n2v.id))
    nuclei = add_model(control.stub, path=str(NUCLEI))[0].model
    assert sorted(_ids(control)) == sorted([n2v.id, nuclei.id])
    assert not (control.cache_dir / "models" / multi.id).exists()
    info = control.stub.GetServerInfo(control_pb2.GetServerInfoRequest()).cache
    assert info.used_bytes == n2v.size_bytes + nuclei.size_bytes <= info.budget_bytes


def test_eviction_skips_models_in_use(start_server: ServerFactory) -> None:
    control = start_server(cache_budget_bytes=_budget_for_two_of_three())
    n2v = add_model(control.stub, path=str(CAREAMICS_ZIP))[0].model
    multi = add_model(control.stub, path=str(MULTI))[0].model
    # n2v is the least recently used but an operation holds it: multi goes instead.
    with control.server.registry.use(n2v.id):
        control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=multi.id))
        nuclei = add_model(control.stub, path=str(NUCLEI))[0].model
    assert sorted(_ids(control)) == sorted([n2v.id, nuclei.id])


def test_eviction_skips_models_a_runtime_has_loaded(start_server: ServerFactory) -> None:
    control = start_server(cache_budget_bytes=_budget_for_two_of_three())
    n2v = add_model(control.stub, path=str(CAREAMICS_ZIP))[0].model
    multi = add_model(control.stub, path=str(MULTI))[0].model
    _register(control, loaded=[n2v.id, multi.id])
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(NUCLEI)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message.startswith("cache full: the model needs ")
    assert message.endswith("2 model(s) in use cannot be evicted (setting cache_budget_bytes)")
    assert sorted(_ids(control)) == sorted([n2v.id, multi.id])
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_model_larger_than_the_whole_budget_is_refused(start_server: ServerFactory) -> None:
    control = start_server(cache_budget_bytes=1024**2)
    message = expect_rpc_error(
        lambda: add_model(control.stub, path=str(NUCLEI)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "ResourceExhaustedError",
    )
    assert message == (
        f"model {NUCLEI_ID[:12]} takes {_size(NUCLEI)} bytes, more than the whole cache budget "
        "of 1048576 bytes (setting cache_budget_bytes)"
    )


def _register(control: Running, loaded: list[str]) -> None:
    control.stub.RegisterRuntime(
        control_pb2.RegisterRuntimeRequest(
            runtime=models_pb2.RuntimeInfo(
                runtime_id="gpu-0",
                flight_uri="grpc://127.0.0.1:1",
                available=True,
                loaded_models=[
                    models_pb2.LoadedModel(model_id=m, weight_format="onnx", device="cpu")
                    for m in loaded
                ],
            )
        )
    )


@contextmanager
def _operation_using(control: Running, model_id: str) -> Iterator[None]:
    """An operation of the control service holding the model's package (as a model test or a
    package fetch does) while the block runs."""
    in_use, release = threading.Event(), threading.Event()

    def hold() -> None:
        with control.server.registry.use(model_id):
            in_use.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert in_use.wait(10)
        yield
    finally:
        release.set()
        holder.join()


def test_removing_a_model_an_operation_uses_waits_for_it(control: Running) -> None:
    """A removal withdraws the model at once (new calls find it NOT_FOUND) and removes it when
    the operation using it (a model test, a package fetch) has finished."""
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    removal = None
    with _operation_using(control, model.id):
        removal = control.stub.RemoveModel.future(
            control_pb2.RemoveModelRequest(model_id=model.id), timeout=30
        )
        deadline = time.monotonic() + 10
        while True:  # withdrawn while it waits
            try:
                control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id))
            except grpc.RpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                break
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert not removal.done()
    assert removal is not None and removal.result().model_id == model.id
    assert not (control.cache_dir / "models" / model.id).exists()


def test_removing_a_model_an_operation_keeps_using_fails_and_keeps_it(
    control: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(control_plane, "_REMOVAL_TIMEOUT_S", 0.3)
    model = add_model(control.stub, path=str(NUCLEI))[0].model
    with _operation_using(control, model.id):
        expect_rpc_error(
            lambda: control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id)),
            grpc.StatusCode.FAILED_PRECONDITION,
            "ModelInUseError",
            "cannot be removed now: an ongoing operation is using it",
        )
    control.stub.DescribeModel(control_pb2.DescribeModelRequest(model_id=model.id))  # still there
    control.stub.RemoveModel(control_pb2.RemoveModelRequest(model_id=model.id))


def test_a_folder_another_process_moved_in_first_is_used(tmp_path: Path) -> None:
    """The rename into models/<id> fails when another writer won the race: use its folder."""
    settings = make_settings(tmp_path / "cache")
    registry = ModelRegistry(settings)
    try:
        winner = settings.cache_dir / "models" / NUCLEI_ID
        shutil.copytree(NUCLEI, winner)  # as if another process had just renamed it in
        info, created = registry.add(types.ModelSourceSpec(kind="path", value=str(NUCLEI)))
        assert (info.id, created) == (NUCLEI_ID, True)
        assert list((settings.cache_dir / "tmp").iterdir()) == []
        assert registry.package_dir(NUCLEI_ID) == winner
    finally:
        registry.close()
