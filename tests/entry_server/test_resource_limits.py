"""Bounded resources: every request that could make the control service spend unbounded memory,
time, disk or threads is refused with RESOURCE_EXHAUSTED naming the limit's setting (or, for an
idle upload, DEADLINE_EXCEEDED), and the service keeps answering everyone else meanwhile."""

from __future__ import annotations

import os
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from modelrunner import errors
from modelrunner.entry_server.call_limits import cancelled_when
from modelrunner.entry_server.packages import description_jobs, yaml_limits
from modelrunner.entry_server.packages.description_workers import DescriptionWorkers
from modelrunner.entry_server.packages.yaml_limits import YamlLimits, count_nodes
from modelrunner.safe_zip import unpack_zip
from modelrunner.settings import Settings
from modelrunner.transport_errors import from_rpc_error
from modelrunner.v1 import control_pb2, models_pb2
from tests.entry_server.conftest import Running, ServerFactory, make_settings, wait_for
from tests.entry_server.helpers import (
    CAREAMICS_ZIP,
    NUCLEI,
    add_model,
    source,
    upload_requests,
    zip_folder,
)
from tests.zoo import needs_zoo

pytestmark = needs_zoo

ALIAS_BOMB = """format_version: 0.5.4
type: model
name: bomb
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""
"""387 420 489 strings from 413 bytes ("billion laughs")."""
NO_NODE_LIMIT: dict[str, Any] = {"max_description_nodes": 10**15}
"""Lets the bomb past the cheap check in the worker, to reach its memory and time limits."""
DATA = CAREAMICS_ZIP.read_bytes() if CAREAMICS_ZIP.is_file() else b""


# -- helpers --------------------------------------------------------------------------------------


def expect_limit(call: Callable[[], Any], setting: str, *fragments: str) -> errors.ModelRunnerError:
    """``call`` fails with RESOURCE_EXHAUSTED naming ``setting`` in its message and details."""
    return expect_status(call, grpc.StatusCode.RESOURCE_EXHAUSTED, setting, *fragments)


def expect_status(
    call: Callable[[], Any], code: grpc.StatusCode, setting: str, *fragments: str
) -> errors.ModelRunnerError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()
        if isinstance(result, Iterator):
            list(result)
    error = info.value
    assert error.code() == code, error.details()
    typed = from_rpc_error(error)
    assert f"(setting {setting})" in typed.message, typed.message
    assert typed.details["limit"] == setting, typed.details
    for fragment in fragments:
        assert fragment in typed.message, typed.message
    return typed


def write_bomb(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "bioimageio.yaml").write_text(ALIAS_BOMB)
    return folder


def validate(
    control: Running, path: Path, timeout: float = 60
) -> control_pb2.ValidateModelResponse:
    return control.stub.ValidateModel(
        control_pb2.ValidateModelRequest(source=source(path=str(path))), timeout=timeout
    )


def assert_answering(control: Running) -> None:
    """The calls that must never starve answer within a short deadline."""
    health = health_pb2_grpc.HealthStub(control.channel)
    answer = health.Check(health_pb2.HealthCheckRequest(service="liveness"), timeout=2)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    control.stub.ListModels(control_pb2.ListModelsRequest(), timeout=2)
    control.stub.GetServerInfo(control_pb2.GetServerInfoRequest(), timeout=2)
    for call in (
        lambda: control.stub.DescribeModel(
            control_pb2.DescribeModelRequest(model_id="abcdef0123"), timeout=2
        ),
        lambda: control.stub.GetModelRoute(
            control_pb2.GetModelRouteRequest(model_id="abcdef0123"), timeout=2
        ),
    ):
        with pytest.raises(grpc.RpcError) as info:
            call()
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    runtime = models_pb2.RuntimeInfo(runtime_id="r1", flight_uri="grpc://127.0.0.1:1")
    control.stub.RegisterRuntime(control_pb2.RegisterRuntimeRequest(runtime=runtime), timeout=2)


class StalledUpload:
    """An UploadPackage stream that sends a header (and maybe a chunk), then nothing."""

    def __init__(
        self, control: Running, *, header: bool = True, chunk: bytes = b"", size: int = 10_000
    ) -> None:
        self.release = threading.Event()

        def requests() -> Iterator[control_pb2.UploadPackageRequest]:
            if header:
                yield control_pb2.UploadPackageRequest(
                    header=control_pb2.UploadHeader(filename="m.zip", size_bytes=size)
                )
            if chunk:
                yield control_pb2.UploadPackageRequest(chunk=chunk)
            self.release.wait(60)

        self.future = control.stub.UploadPackage.future(requests(), timeout=60)

    def close(self) -> None:
        self.release.set()
        self.future.cancel()


@pytest.fixture
def stalled() -> Iterator[list[StalledUpload]]:
    opened: list[StalledUpload] = []
    yield opened
    for upload in opened:
        upload.close()


def refused(uploads: list[StalledUpload]) -> list[StalledUpload]:
    return [u for u in uploads if u.future.done()]


class BlockedJobs:
    """Makes the description workers hold jobs of one kind until released (a slow description
    without burning a core); other jobs run as usual."""

    def __init__(self, control: Running, job: Callable[..., Any]) -> None:
        workers = control.server.registry.description_workers
        self.release = threading.Event()
        self.started = threading.Semaphore(0)
        original = workers.run

        def run(what: str, called: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if called is job:
                self.started.release()
                self.release.wait(30)
            return original(what, called, *args, **kwargs)

        workers.run = run  # type: ignore[method-assign]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# -- YAML: alias bombs and huge descriptions ------------------------------------------------------


def test_an_alias_bomb_is_counted_without_expanding_it() -> None:
    started = time.monotonic()
    assert count_nodes(ALIAS_BOMB, stop_after=10**12) > 387_420_489
    assert time.monotonic() - started < 5  # generous: it reads 413 bytes of events
    assert count_nodes("a: &x [1, 2]\nb: *x\nc: [*x, *x]\n", stop_after=100) == 17


def test_an_alias_bomb_sent_to_validate_is_refused_before_it_expands(
    control: Running, tmp_path: Path
) -> None:
    error = expect_limit(
        lambda: validate(control, write_bomb(tmp_path / "bomb"), timeout=20),
        "max_description_nodes",
        "description bioimageio.yaml expands to more than 50000 YAML nodes",
    )
    assert error.details["limit_value"] == "50000"


def test_an_alias_bomb_sent_to_add_model_is_refused(control: Running, tmp_path: Path) -> None:
    expect_limit(
        lambda: add_model(control.stub, path=str(write_bomb(tmp_path / "bomb"))),
        "max_description_nodes",
    )
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_an_uploaded_alias_bomb_is_refused(control: Running) -> None:
    upload = control.stub.UploadPackage(
        iter(upload_requests(ALIAS_BOMB.encode(), "bioimageio.yaml"))
    )
    expect_limit(
        lambda: control.stub.ValidateModel(
            control_pb2.ValidateModelRequest(source={"upload_id": upload.upload_id}), timeout=20
        ),
        "max_description_nodes",
    )


def test_a_description_over_the_size_limit_is_refused(start_server: ServerFactory) -> None:
    control = start_server(max_description_bytes=2000)
    expect_limit(
        lambda: control.stub.ValidateModel(
            control_pb2.ValidateModelRequest(source={"upload_id": _upload_nuclei_yaml(control)}),
            timeout=20,
        ),
        "max_description_bytes",
        "description bioimageio.yaml takes 2940 bytes, more than the limit of 2000 bytes",
    )


def _upload_nuclei_yaml(control: Running) -> str:
    data = (NUCLEI / "bioimageio.yaml").read_bytes()
    return control.stub.UploadPackage(iter(upload_requests(data, "bioimageio.yaml"))).upload_id


def test_the_yaml_check_in_the_worker_uses_the_servers_limits(tmp_path: Path) -> None:
    rdf = write_bomb(tmp_path / "bomb") / "bioimageio.yaml"
    yaml_limits.check_description(rdf, YamlLimits(max_nodes=10**12))
    with pytest.raises(errors.ResourceExhaustedError) as info:
        yaml_limits.check_description(rdf, YamlLimits(max_bytes=100))
    assert info.value.details["limit"] == "max_description_bytes"


# -- the description workers: memory, time, cancellation, separation ------------------------------


def burn_cpu(seconds: float) -> None:
    """A job for a description worker: a description that takes long to check."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        sum(range(10_000))


def allocate(size: int) -> int:
    """A job for a description worker: a description that takes much memory to check."""
    return len(bytearray(size))


class SlowJobs:
    """Replaces one kind of job the control service sends its description workers by another
    job that runs in the worker (a real process, with its real limits)."""

    def __init__(self, control: Running, job: Callable[..., Any], *instead: Any) -> None:
        workers = control.server.registry.description_workers
        original = workers.run
        self.started = threading.Event()
        """Set when the replaced job is sent (an add runs other jobs in workers before it)."""

        def run(what: str, called: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
            if called is job:
                self.started.set()
                return original(what, *instead)
            return original(what, called, *args, **kwargs)

        workers.run = run  # type: ignore[method-assign]


def worker_settings(tmp_path: Path, **overrides: Any) -> Settings:
    return make_settings(tmp_path / "cache", **{"description_workers": 1, **overrides})


def test_an_alias_bomb_past_the_node_check_is_stopped_by_the_memory_limit(
    tmp_path: Path,
) -> None:
    settings = worker_settings(tmp_path, validation_memory_bytes=64 * 1024**2, **NO_NODE_LIMIT)
    workers = DescriptionWorkers(settings)
    rdf = write_bomb(tmp_path / "bomb") / "bioimageio.yaml"
    try:
        with pytest.raises(errors.ResourceExhaustedError) as info:
            workers.run(
                "validating bomb",
                description_jobs.validate,
                rdf,
                perform_io_checks=False,
                source="",
            )
        assert info.value.details["limit"] == "validation_memory_bytes"
        assert info.value.message.startswith("validating bomb ran out of memory")
        assert workers.run("allocating", allocate, 1000) == 1000  # a fresh worker took over
    finally:
        workers.close()


def test_an_alias_bomb_past_the_node_check_is_stopped_by_the_time_limit(tmp_path: Path) -> None:
    settings = worker_settings(
        tmp_path, validation_timeout_s=0.5, validation_memory_bytes=1024**3, **NO_NODE_LIMIT
    )
    workers = DescriptionWorkers(settings)
    rdf = write_bomb(tmp_path / "bomb") / "bioimageio.yaml"
    try:
        with pytest.raises(errors.ResourceExhaustedError) as info:
            workers.run(
                "validating bomb",
                description_jobs.validate,
                rdf,
                perform_io_checks=False,
                source="",
            )
        assert info.value.details["limit"] == "validation_timeout_s"
        assert workers.busy_pids() == []
    finally:
        workers.close()


def test_a_worker_job_stops_when_its_caller_is_cancelled(tmp_path: Path) -> None:
    workers = DescriptionWorkers(worker_settings(tmp_path))
    gone = threading.Event()
    threading.Timer(0.5, gone.set).start()
    try:
        with cancelled_when(gone.is_set), pytest.raises(errors.CancelledError):
            workers.run("burning", burn_cpu, 30)
        assert workers.busy_pids() == []
    finally:
        workers.close()


def test_a_validation_over_the_memory_limit_is_refused(start_server: ServerFactory) -> None:
    control = start_server(validation_memory_bytes=64 * 1024**2)
    SlowJobs(control, description_jobs.validate, allocate, 512 * 1024**2)
    expect_limit(
        lambda: validate(control, NUCLEI),
        "validation_memory_bytes",
        "validating bioimageio.yaml ran out of memory: it needs more than the limit of 67108864",
    )


def test_a_validation_over_the_time_limit_is_killed(start_server: ServerFactory) -> None:
    control = start_server(validation_timeout_s=1.0)
    SlowJobs(control, description_jobs.validate, burn_cpu, 30)
    expect_limit(
        lambda: validate(control, NUCLEI),
        "validation_timeout_s",
        "validating bioimageio.yaml took longer than the limit of 1 s",
    )
    assert control.server.registry.description_workers.busy_pids() == []


def test_a_validation_is_killed_when_its_client_goes_away(start_server: ServerFactory) -> None:
    control = start_server()
    workers = control.server.registry.description_workers
    SlowJobs(control, description_jobs.validate, burn_cpu, 60)
    future = control.stub.ValidateModel.future(
        control_pb2.ValidateModelRequest(source=source(path=str(NUCLEI))), timeout=60
    )
    wait_for(lambda: bool(workers.busy_pids()), timeout=20)
    pids = workers.busy_pids()
    future.cancel()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    wait_for(lambda: workers.busy_pids() == [], timeout=10)


def test_an_add_is_killed_when_its_client_goes_away(start_server: ServerFactory) -> None:
    control = start_server()
    workers = control.server.registry.description_workers
    slow = SlowJobs(control, description_jobs.read_model, burn_cpu, 60)
    call = control.stub.AddModel(
        control_pb2.AddModelRequest(source=source(path=str(NUCLEI))), timeout=60
    )
    # not the worker that lists the package's files first: the one reading the model
    wait_for(slow.started.is_set, timeout=20)
    wait_for(lambda: bool(workers.busy_pids()), timeout=20)
    pids = workers.busy_pids()
    call.cancel()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    assert list(control.stub.ListModels(control_pb2.ListModelsRequest()).models) == []


def test_listing_a_descriptions_files_runs_in_a_worker_and_stops_with_its_client(
    start_server: ServerFactory,
) -> None:
    """Staging reads an untrusted description with bioimageio.spec to find the files it names:
    that happens in a description worker too, which is killed when the client goes away."""
    control = start_server()
    workers = control.server.registry.description_workers
    SlowJobs(control, description_jobs.referenced_files, burn_cpu, 60)
    call = control.stub.AddModel(
        control_pb2.AddModelRequest(source=source(path=str(NUCLEI))), timeout=60
    )
    wait_for(lambda: bool(workers.busy_pids()), timeout=20)
    pids = workers.busy_pids()
    assert_answering(control)
    call.cancel()
    wait_for(lambda: not any(pid_alive(p) for p in pids), timeout=10)
    assert list(control.stub.ListModels(control_pb2.ListModelsRequest()).models) == []


def test_a_slow_validation_does_not_block_add_model(start_server: ServerFactory) -> None:
    control = start_server()
    workers = control.server.registry.description_workers
    SlowJobs(control, description_jobs.validate, burn_cpu, 60)
    future = control.stub.ValidateModel.future(
        control_pb2.ValidateModelRequest(source=source(path=str(NUCLEI))), timeout=60
    )
    try:
        wait_for(lambda: bool(workers.busy_pids()), timeout=20)
        result, _ = add_model(control.stub, path=str(NUCLEI))  # while the validation burns a core
        assert result.created
        assert not future.done()
        assert_answering(control)
    finally:
        future.cancel()


def test_validations_over_the_concurrency_limit_are_refused(start_server: ServerFactory) -> None:
    control = start_server(max_concurrent_validations=2)
    blocked = BlockedJobs(control, description_jobs.validate)
    futures = [
        control.stub.ValidateModel.future(
            control_pb2.ValidateModelRequest(source=source(path=str(NUCLEI))), timeout=30
        )
        for _ in range(2)
    ]
    try:
        for _ in futures:
            assert blocked.started.acquire(timeout=20)
        expect_limit(lambda: validate(control, NUCLEI), "max_concurrent_validations")
        assert_answering(control)
        result, _ = add_model(control.stub, path=str(NUCLEI))  # adds have their own limit
        assert result.created
    finally:
        blocked.release.set()
    assert [f.result().report.status for f in futures] == ["valid-format"] * 2


def test_adds_over_the_concurrency_limit_are_refused(start_server: ServerFactory) -> None:
    control = start_server(max_concurrent_adds=1)
    blocked = BlockedJobs(control, description_jobs.read_model)
    results: list[Any] = []
    adder = threading.Thread(
        target=lambda: results.append(add_model(control.stub, path=str(NUCLEI))[0])
    )
    adder.start()
    try:
        assert blocked.started.acquire(timeout=20)
        expect_limit(
            lambda: add_model(control.stub, path=str(NUCLEI)),
            "max_concurrent_adds",
            "too many model adds at once: the server takes 1",
        )
        assert validate(control, NUCLEI).report.status == "valid-format"
        assert_answering(control)
    finally:
        blocked.release.set()
        adder.join(30)
    assert results and results[0].created


def test_package_fetches_over_the_concurrency_limit_are_refused(
    start_server: ServerFactory,
) -> None:
    """A runtime, or many, opening package downloads and never reading them to the end."""
    control = start_server(max_concurrent_package_fetches=1)
    model_id = add_model(control.stub, path=str(NUCLEI))[0].model.id
    request = control_pb2.FetchModelPackageRequest(model_id=model_id)
    first = control.stub.FetchModelPackage(request, timeout=30)
    try:
        assert next(first).size_bytes > 0  # open, and left unread
        expect_limit(
            lambda: list(control.stub.FetchModelPackage(request, timeout=30)),
            "max_concurrent_package_fetches",
            "too many package fetches at once: the server takes 1",
        )
        assert_answering(control)
    finally:
        first.cancel()
    wait_for(lambda: _fetch_answers(control, request), timeout=20)


def _fetch_answers(control: Running, request: control_pb2.FetchModelPackageRequest) -> bool:
    try:
        return len(list(control.stub.FetchModelPackage(request, timeout=30))) > 1
    except grpc.RpcError:
        return False


# -- uploads: idle streams, counts, sizes, the cache budget ---------------------------------------


def test_sixteen_idle_upload_streams_do_not_starve_the_control_service(
    control: Running, stalled: list[StalledUpload]
) -> None:
    stalled += [StalledUpload(control) for _ in range(16)]
    wait_for(lambda: len(refused(stalled)) == 12, timeout=20)  # 4 per client by default
    for upload in refused(stalled):
        expect_limit(upload.future.result, "max_concurrent_uploads_per_client")
    assert_answering(control)
    result, _ = add_model(control.stub, path=str(NUCLEI))
    assert result.created
    assert validate(control, NUCLEI).report.status == "valid-format"


def test_idle_upload_streams_over_the_server_limit_are_refused(
    start_server: ServerFactory, stalled: list[StalledUpload]
) -> None:
    control = start_server(max_concurrent_uploads=3, max_concurrent_uploads_per_client=100)
    stalled += [StalledUpload(control) for _ in range(20)]
    wait_for(lambda: len(refused(stalled)) == 17, timeout=20)
    for upload in refused(stalled):
        expect_limit(upload.future.result, "max_concurrent_uploads", "too many uploads at once")
    assert_answering(control)
    for upload in stalled:
        upload.close()
    # the held slots are given back when the streams end
    wait_for(lambda: _upload_works(control), timeout=20)


def _upload_works(control: Running) -> bool:
    try:
        control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip")), timeout=10)
    except grpc.RpcError:
        return False
    return True


def test_an_idle_upload_is_aborted_and_its_partial_file_removed(
    start_server: ServerFactory, stalled: list[StalledUpload]
) -> None:
    control = start_server(upload_idle_timeout_s=0.5)
    stalled.append(StalledUpload(control, chunk=b"x" * 1000))
    wait_for(lambda: stalled[0].future.done(), timeout=20)
    expect_status(
        stalled[0].future.result,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        "upload_idle_timeout_s",
        "upload aborted: nothing arrived for 0.5 s",
    )
    wait_for(lambda: list((control.cache_dir / "uploads").iterdir()) == [])


def test_an_upload_stream_that_never_sends_its_header_times_out(
    start_server: ServerFactory, stalled: list[StalledUpload]
) -> None:
    control = start_server(upload_idle_timeout_s=0.5)
    stalled.append(StalledUpload(control, header=False))
    wait_for(lambda: stalled[0].future.done(), timeout=20)
    expect_status(
        stalled[0].future.result, grpc.StatusCode.DEADLINE_EXCEEDED, "upload_idle_timeout_s"
    )


def test_a_cancelled_upload_of_unknown_size_is_not_kept(
    control: Running, stalled: list[StalledUpload]
) -> None:
    stalled.append(StalledUpload(control, chunk=DATA[:100_000], size=0))
    uploads = control.cache_dir / "uploads"
    wait_for(lambda: any(uploads.iterdir()), timeout=20)
    stalled[0].future.cancel()
    wait_for(lambda: list(uploads.iterdir()) == [], timeout=20)
    assert control.server.registry.uploads.pending_count("127.0.0.1") == 0


def test_pending_uploads_per_client_are_limited(start_server: ServerFactory) -> None:
    control = start_server(max_pending_uploads_per_client=2)
    kept = [control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip"))) for _ in range(2)]
    expect_limit(
        lambda: control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip"))),
        "max_pending_uploads_per_client",
        "127.0.0.1 already has 2 uploads kept or being received",
    )
    add_model(control.stub, upload_id=kept[0].upload_id)  # an added upload is no longer pending
    control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip")))


def test_uploads_count_in_the_cache_budget(start_server: ServerFactory) -> None:
    control = start_server(cache_budget_bytes=3 * len(DATA) // 2)
    control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip")))
    for size in (len(DATA), 0):  # declared at once, or found out while receiving
        expect_limit(
            lambda size=size: control.stub.UploadPackage(  # type: ignore[misc]
                iter(upload_requests(DATA, "m.zip", size=size))
            ),
            "cache_budget_bytes",
            "cache full: the upload needs",
        )
    assert len(list((control.cache_dir / "uploads").iterdir())) == 1


def test_an_upload_makes_room_by_evicting_models_not_in_use(start_server: ServerFactory) -> None:
    nuclei_bytes = sum(p.stat().st_size for p in NUCLEI.iterdir())
    control = start_server(cache_budget_bytes=nuclei_bytes + len(DATA) // 2)
    add_model(control.stub, path=str(NUCLEI))
    control.stub.UploadPackage(iter(upload_requests(DATA, "m.zip")))
    assert list(control.stub.ListModels(control_pb2.ListModelsRequest()).models) == []


# -- zip bombs ------------------------------------------------------------------------------------


def _zeros_entry(zf: zipfile.ZipFile, name: str, size: int) -> None:
    with zf.open(name, "w", force_zip64=True) as out:
        block = bytes(1024**2)
        for _ in range(size // len(block)):
            out.write(block)


def test_a_zip_bomb_is_refused_by_its_compression_ratio_before_unpacking(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    control = start_server(max_unpacked_bytes=1024**3, compression_ratio_min_bytes=1024**2)
    archive = zip_folder(NUCLEI, tmp_path / "bomb.zip")
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        _zeros_entry(zf, "zeros.bin", 100 * 1024**2)
    assert archive.stat().st_size < 5 * 1024**2
    expect_limit(
        lambda: add_model(control.stub, path=str(archive)),
        "max_compression_ratio",
        "zip entry 'zeros.bin' unpacks to 104857600 bytes from ",
    )
    assert list((control.cache_dir / "tmp").iterdir()) == []


def test_a_zip_bomb_spread_over_small_entries_is_refused_as_a_whole(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    control = start_server(max_unpacked_bytes=1024**3, compression_ratio_min_bytes=4 * 1024**2)
    archive = tmp_path / "bombs.zip"
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bioimageio.yaml", "type: model\n")
        for i in range(40):
            _zeros_entry(zf, f"zeros{i}.bin", 2 * 1024**2)
    expect_limit(
        lambda: add_model(control.stub, path=str(archive)),
        "max_compression_ratio",
        "the package unpacks to ",
    )


def test_zoo_packages_pass_the_compression_ratio_limit(tmp_path: Path) -> None:
    for name, archive in (
        ("careamics", CAREAMICS_ZIP),
        ("nuclei", zip_folder(NUCLEI, tmp_path / "nuclei.zip")),
    ):
        dest = tmp_path / name
        dest.mkdir()
        written = unpack_zip(
            archive, dest, max_bytes=100 * 1024**2, max_files=100, ratio_min_bytes=0
        )
        assert written, name
