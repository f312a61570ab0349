"""The suite in parallel workers (pytest-xdist; README "Tests": ``pytest -n 3``), and alone.

- **What each worker keeps to itself.** Its servers listen on port 0 and keep their caches under
  its own ``tmp_path_factory`` folder (xdist gives each worker one). bioimage.io's download cache,
  by default ``~/.cache/bioimageio`` for every process on the machine, is a folder of the
  process's own (``BIOIMAGEIO_CACHE_PATH``, which the servers and the commands the tests run
  inherit), removed when the process ends: tests fetch from local web servers on ports of their
  own, so nothing in it is ever read again. It is set when this module is imported, before
  ``bioimageio.spec`` reads its settings: ``tests/conftest.py`` imports it first.
- **What the workers share.** The example models (trained, about 35 s of CPU for both kinds) and
  the tiny models (built with their frameworks) are only read once written: the first worker that
  needs one builds it, under a file lock, in the folder all workers of the run share; the others
  wait for it and read it (:func:`built_once`).
- **Which tests run together** (``--dist loadfile``, :func:`make_scheduler`). The tests of one
  file run on one worker, so that module fixtures (servers with TLS, in token mode, with their
  own limits) start once. The Ray tests (``tests/cluster``) run on one worker, one after the
  other: each starts a local Ray cluster, and Ray's state lives in one home per package
  (``tests/cluster/conftest.py``). The files that take longest are handed out first
  (:func:`longest_first`), so that no worker is left running one of them alone at the end.
"""

from __future__ import annotations

import atexit
import gc
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from filelock import FileLock

WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""``gw0``, ``gw1``, ... in an xdist worker; empty otherwise (a serial run, or xdist's
controller)."""

if "bioimageio.spec" in sys.modules:  # pragma: no cover - an import moved above this module's
    raise ImportError(
        "tests.parallel must be imported before bioimageio.spec (it sets BIOIMAGEIO_CACHE_PATH, "
        "which bioimageio.spec reads once): import it first in tests/conftest.py"
    )
_OWN_CACHE = Path(tempfile.mkdtemp(prefix=f"modelrunner-tests-{WORKER or 'main'}-"))
os.environ["BIOIMAGEIO_CACHE_PATH"] = str(_OWN_CACHE / "bioimageio")
atexit.register(shutil.rmtree, _OWN_CACHE, ignore_errors=True)

RAY_TESTS = "tests/cluster/"
"""Run on one worker, one test after the other."""

LONGEST_FIRST = (
    RAY_TESTS,
    "tests/client/test_large_arrays.py",
    "tests/client/test_volumes.py",
    "tests/client/test_predict.py",
    "tests/client/test_core_pipeline.py",
    "tests/test_readme_quick_start.py",
    "tests/runtime_flight/test_model_tests.py",
    "tests/entry_server/test_resource_limits.py",
    "tests/test_lifecycle.py",
    "tests/client/test_readme_core_example.py",
    "tests/runtime_flight/test_inference_tiny.py",
    "tests/runtime_flight/test_streamed_serving.py",
    "tests/client/test_quiet_server_logs.py",
)
"""Files (or folders) whose tests take 15 s or more together in a serial run (``pytest
--durations=0``), longest first."""


def shared_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder every worker of this run sees (the parent of the workers' own folders); without
    xdist, the session's own folder."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base


def built_once(folder: Path, build: Callable[[Path], object]) -> Path:
    """``folder``, written by ``build(folder)`` in the first worker that asks for it; the others
    wait for that (a file lock beside it) and read it. A build that failed is tried again."""
    done = folder.with_name(folder.name + ".done")
    with FileLock(folder.with_name(folder.name + ".lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            build(folder)
            done.touch()
    return folder


def scope_of(nodeid: str) -> str:
    """The unit of work a worker takes: the test's file, or all of :data:`RAY_TESTS`."""
    path = nodeid.split("::", 1)[0]
    return RAY_TESTS if path.startswith(RAY_TESTS) else path


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's ``loadfile`` scheduling with :func:`scope_of` as the file. (xdist's own
    ``xdist_group`` marks do nothing under pytest 9, whose node ids xdist cannot rename.)"""
    from xdist.scheduler import LoadFileScheduling

    class ByFileRayTogether(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return scope_of(nodeid)

    return ByFileRayTogether(config, log)


def longest_first(items: list[pytest.Item]) -> None:
    """In an xdist worker, the files of :data:`LONGEST_FIRST` first (the scheduler hands the files
    out in the order the workers collected them; ``--no-loadscope-reorder``). Without xdist,
    nothing changes."""
    if not WORKER:
        return

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next(
            (i for i, first in enumerate(LONGEST_FIRST) if path.startswith(first)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)  # stable: the order within a file and among the rest stays


@contextmanager
def one_gc_collection() -> Iterator[None]:
    """``gc.collect()`` once at the end of the block instead of at every call in it.

    bioimageio.core's ``unload`` collects after each pipeline, which takes 0.3-0.5 s in a process
    that has loaded every framework; a session's shared server unloads dozens of models when it
    stops (10-19 s per worker, measured), and a worker then ends."""
    collect = gc.collect
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gc, "collect", lambda generation=2: 0)
        yield
    collect()
