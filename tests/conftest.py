"""Shared fixtures: a real ``modelrunner serve`` (control service + embedded runtime) on free
ports for the whole session, a client connected to it, the zoo's nuclei model added, tiny model
packages built on first use, and in-process bioimageio.core pipelines to compare with.

In parallel runs (``pytest -n 3``) each worker has its own servers and caches, and the workers
share the packages built once per run (``tests/parallel.py``)."""

from __future__ import annotations

# first: it gives this process a cache of its own before bioimageio.spec reads its settings
from tests import parallel  # isort: skip

import shutil
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modelrunner.auth import Role
from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings
from tests.reference import Pipelines
from tests.tiny_models import BUILDERS
from tests.zoo import CAREAMICS_ZIP, NUCLEI, SKIP_REASON, ZOO_PRESENT, uses_zoo


@pytest.hookimpl(tryfirst=True)  # before ``-m`` selects by the marks given here
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Without ``../shared/zoo`` (a fresh clone), the tests that read it are skipped. In an xdist
    worker, the longest files come first. The Ray tests are marked ``alone``."""
    parallel.longest_first(items)
    for item in items:
        if item.nodeid.startswith(parallel.RAY_TESTS):
            item.add_marker(pytest.mark.alone)
    if ZOO_PRESENT:
        return
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if uses_zoo(item):
            item.add_marker(skip)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``pytest -n N``: by file, the Ray tests together (``tests/parallel.py``)."""
    return parallel.make_scheduler(config, log) if config.getoption("dist") == "loadfile" else None


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        bioimageio_base_url="http://127.0.0.1:9/unused",
    )
    with start_embedded(settings) as running:
        yield running
        with parallel.one_gc_collection():  # it unloads every model the session loaded
            running.stop()


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[ModelRunnerClient]:
    with ModelRunnerClient(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def nuclei(client: ModelRunnerClient) -> ModelInfo:
    return client.add_model(NUCLEI)


@pytest.fixture(scope="session")
def identity(client: ModelRunnerClient, tiny: Callable[[str], Path]) -> ModelInfo:
    """The tiny ONNX identity on the shared server, loaded."""
    info = client.add_model(tiny("onnx"))
    client.load(info.id)
    return info


@pytest.fixture
def runtime(server: RunningServer) -> RuntimeFlightServer:
    """The shared server's embedded Flight runtime."""
    assert server.runtime is not None
    return server.runtime.server


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny model package by name (see ``tests.tiny_models.BUILDERS``), built on first use (once
    for all workers of a parallel run; read only)."""
    root = parallel.shared_folder(tmp_path_factory) / "tiny-models"
    root.mkdir(exist_ok=True)
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = parallel.built_once(root / name, BUILDERS[name])
        return built[name]

    return get


@pytest.fixture(scope="session")
def example_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """An example model package by kind (``modelrunner.example_kinds.KINDS``: ``nuclei``,
    ``nuclei3d``), trained and written on first use (seconds each; once for all workers of a
    parallel run; read only): the realistic packages a fresh clone has."""
    from modelrunner.example_models import write_example_model

    root = parallel.shared_folder(tmp_path_factory) / "example-models"
    root.mkdir(exist_ok=True)
    made: dict[str, Path] = {}

    def get(kind: str) -> Path:
        if kind not in made:
            made[kind] = parallel.built_once(
                root / kind, lambda folder: write_example_model(kind, folder)
            )
        return made[kind]

    return get


@pytest.fixture(scope="session")
def example_nuclei(client: ModelRunnerClient, example_model: Callable[[str], Path]) -> ModelInfo:
    """The 2-D example nuclei model on the shared server."""
    return client.add_model(example_model("nuclei"))


@pytest.fixture(scope="session")
def n2v_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CAREamics package, unzipped (the zoo folder is read-only)."""
    pytest.importorskip("careamics")
    if not CAREAMICS_ZIP.is_file():
        pytest.skip(f"no {CAREAMICS_ZIP}")
    target = tmp_path_factory.mktemp("careamics-n2v")
    with zipfile.ZipFile(CAREAMICS_ZIP) as zf:
        zf.extractall(target)
    return target


@pytest.fixture(scope="session")
def zoo_copy(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Path], Path]:
    """A writable copy of a zoo package (for tests that break it)."""

    def copy(package: Path) -> Path:
        target = tmp_path_factory.mktemp(package.name)
        shutil.copytree(package, target, dirs_exist_ok=True)
        for path in target.iterdir():
            path.chmod(0o644)
        return target

    return copy


@pytest.fixture(scope="session")
def pipelines() -> Pipelines:
    # not unloaded at the end: the process exit frees them, and bioimageio.core's unload runs
    # gc.collect() per pipeline (about 0.3 s each)
    return Pipelines()


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary working directory: bioimageio.core unzips TensorFlow weights into
    ``./bioimageio_unzipped_tf_weights``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@dataclass(frozen=True)
class Secured:
    """A ``modelrunner serve`` with authentication on (loopback, plaintext), and its tokens."""

    server: RunningServer
    tokens: dict[str, str]
    """By name: ``admin``, ``alice`` (write, workspace lab-a), ``alan`` (read, lab-a), ``bob``
    (write, lab-b), ``runtime`` (runtime)."""
    store: TokenStore

    @property
    def address(self) -> str:
        return self.server.address

    def client(self, name: str | None) -> ModelRunnerClient:
        return ModelRunnerClient(
            self.address, token=self.tokens[name] if name else None, timeout=60
        )


SECURED_TOKENS = {
    "admin": (Role.ADMIN, "default"),
    "alice": (Role.WRITE, "lab-a"),
    "alan": (Role.READ, "lab-a"),
    "bob": (Role.WRITE, "lab-b"),
    "runtime": (Role.RUNTIME, "default"),
}


@pytest.fixture(scope="session")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    cache = tmp_path_factory.mktemp("secured-cache")
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=cache,
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        bioimageio_base_url="http://127.0.0.1:9/unused",
        auth=True,
    )
    store = TokenStore(settings.effective_tokens_file)
    tokens = {
        name: store.create(name, role, workspace)[0]
        for name, (role, workspace) in SECURED_TOKENS.items()
    }
    with start_embedded(settings) as running:
        yield Secured(running, tokens, store)
        with parallel.one_gc_collection():
            running.stop()
