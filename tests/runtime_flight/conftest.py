"""Fixtures: tiny model packages (built once per session), the real packages in ``../shared/zoo``,
and bioimageio.core pipelines to compare with."""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
from bioimageio.core import PredictionPipeline
from bioimageio.spec.model import v0_5

from modelrunner.runtime_flight.descriptions import load_description
from modelrunner.runtime_flight.pipelines import create_pipeline
from tests.tiny_models import BUILDERS

ZOO = Path(__file__).resolve().parents[3] / "shared" / "zoo"
NUCLEI = ZOO / "unet2d_nuclei_broad"
MULTI = ZOO / "unet2d_multi_tensor"
N2V_ZIP = ZOO / "careamics_n2v_tiny.zip"

needs_zoo = pytest.mark.skipif(not NUCLEI.is_dir(), reason=f"no model zoo at {ZOO}")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Tiny model package by name (see ``tests.tiny_models.BUILDERS``), built on first use."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = BUILDERS[name](root / name)
        return built[name]

    return get


@pytest.fixture(scope="session")
def n2v_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CAREamics package, unzipped (the zoo folder is read-only)."""
    pytest.importorskip("careamics")
    if not N2V_ZIP.is_file():
        pytest.skip(f"no {N2V_ZIP}")
    target = tmp_path_factory.mktemp("careamics-n2v")
    with zipfile.ZipFile(N2V_ZIP) as zf:
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


class Pipelines:
    """Loaded pipelines shared by the tests of a session, by (package, weight format)."""

    def __init__(self) -> None:
        self._pipelines: dict[tuple[Path, str], PredictionPipeline] = {}

    def get(self, package: Path, weight_format: str) -> PredictionPipeline:
        key = (package, weight_format)
        if key not in self._pipelines:
            self._pipelines[key] = create_pipeline(descr(package), weight_format, "cpu")
        return self._pipelines[key]


@pytest.fixture(scope="session")
def pipelines() -> Pipelines:
    # not unloaded at the end: the process exit frees them, and bioimageio.core's unload runs
    # gc.collect() per pipeline (about 0.3 s each)
    return Pipelines()


def descr(package: Path) -> v0_5.ModelDescr:
    return load_description(package)


@pytest.fixture
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run in a temporary working directory: bioimageio.core unzips TensorFlow weights into
    ``./bioimageio_unzipped_tf_weights``."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
