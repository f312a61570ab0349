"""The Triton virtual environment: PyTriton (server) and tritonclient, apart from the project's.

PyTriton needs numpy < 2, which the project's environment does not have, so it lives in its own
environment, kept outside the repository in :data:`ENVS_DIR` (``~/.cache/modelrunner-benchmarks``,
or ``$MODELRUNNER_BENCHMARK_ENVS``) so that a clone stays small and a new clone (CI's, say) reuses
it. Set it up explicitly with
``python -m benchmarks.triton_venv`` (``--force`` rebuilds it); the benchmark sets it up on
demand. A marker file written last says the environment is complete and for which requirements,
so an interrupted setup is redone, not used.

On Python 3.11, Triton's Python backend stub fails in ``multiprocessing.resource_tracker``
(``'_thread.RLock' object has no attribute '_recursion_count'``): a ``sitecustomize.py`` in the
environment gives the tracker a pure-Python ``RLock``, which has that method.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

logger = logging.getLogger(__name__)

ENVS_DIR = Path(
    os.environ.get("MODELRUNNER_BENCHMARK_ENVS")
    or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "modelrunner-benchmarks"
)
"""Where the environments live: outside the repository (PyTriton's is about 370 MB)."""
DEFAULT_PATH = ENVS_DIR / "triton-venv"
REQUIREMENTS = ("nvidia-pytriton==0.7.0", "tritonclient[grpc]==2.73.0", "numpy<2")
CLIENT_PATH = ENVS_DIR / "tritonclient-venv"
"""tritonclient alone (no server, any numpy): what the tests and the V2 benchmark call
modelrunner's Open Inference endpoint with, made in about 20 s."""
CLIENT_REQUIREMENTS = ("tritonclient[grpc]==2.73.0",)
MARKER = "benchmark-ready.json"
SITECUSTOMIZE = '''"""Written by benchmarks/triton_venv.py.

Triton's Python backend stub fails on Python 3.11 in multiprocessing.resource_tracker, whose C
RLock lacks ``_recursion_count``: use the pure-Python RLock, which has it.
"""

import threading
from multiprocessing import resource_tracker

if not hasattr(resource_tracker._resource_tracker._lock, "_recursion_count"):
    resource_tracker._resource_tracker._lock = threading._PyRLock()
'''


@dataclass(frozen=True)
class TritonVenv:
    path: Path
    created: bool
    setup_seconds: float
    """Seconds spent creating it now (0 when it was there already)."""

    @property
    def python(self) -> Path:
        return venv_python(self.path)


def venv_python(path: Path) -> Path:
    return path / "bin" / "python"


def is_ready(path: Path, requirements: tuple[str, ...] = REQUIREMENTS) -> bool:
    marker = path / MARKER
    if not marker.is_file() or not venv_python(path).exists():
        return False
    try:
        return json.loads(marker.read_text()).get("requirements") == list(requirements)
    except (OSError, ValueError):
        return False


def ensure_tritonclient_venv(*, log_path: Path | None = None) -> TritonVenv:
    """The tritonclient-only environment (:data:`CLIENT_PATH`), created unless complete."""
    return ensure_triton_venv(CLIENT_PATH, requirements=CLIENT_REQUIREMENTS, log_path=log_path)


def ensure_triton_venv(
    path: Path = DEFAULT_PATH,
    *,
    requirements: tuple[str, ...] = REQUIREMENTS,
    force: bool = False,
    log_path: Path | None = None,
) -> TritonVenv:
    """Create the environment unless a complete one is there; pip's output goes to
    ``log_path``. Raises ``RuntimeError`` when the setup fails (no network, for instance)."""
    if not force and is_ready(path, requirements):
        return TritonVenv(path, created=False, setup_seconds=0.0)
    started = time.monotonic()
    if path.exists():
        shutil.rmtree(path)
    logger.info("creating the Triton environment in %s (%s)", path, ", ".join(requirements))
    log = log_path.open("wb") if log_path is not None else None
    try:
        _run([sys.executable, "-m", "venv", str(path)], log)
        python = str(venv_python(path))
        _run([python, "-m", "pip", "install", "--quiet", *requirements], log)
        purelib = subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (Path(purelib) / "sitecustomize.py").write_text(SITECUSTOMIZE)
    finally:
        if log is not None:
            log.close()
    seconds = time.monotonic() - started
    (path / MARKER).write_text(
        json.dumps({"requirements": list(requirements), "setup_seconds": round(seconds, 1)})
    )
    logger.info("Triton environment ready after %.0f s", seconds)
    return TritonVenv(path, created=True, setup_seconds=seconds)


def _run(command: list[str], log: IO[bytes] | None) -> None:
    result = subprocess.run(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=900,
    )
    if result.returncode != 0:
        output = result.stdout.decode(errors="replace")[-2000:] if result.stdout else ""
        where = f" (output in {log.name})" if log is not None else f"\n{output}"
        raise RuntimeError(
            f"{' '.join(command[:4])} ... failed with exit code {result.returncode}{where}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="set up the Triton environment of the benchmark")
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    parser.add_argument("--force", action="store_true", help="rebuild it even if complete")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    venv = ensure_triton_venv(args.path, force=args.force)
    if venv.created:
        print(f"Triton environment created in {venv.path} in {venv.setup_seconds:.0f} s")
    else:
        print(f"Triton environment already complete in {venv.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
