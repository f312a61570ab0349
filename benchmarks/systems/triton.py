"""NVIDIA Triton (PyTriton, Python backend, CPU) serving the identity, called with tritonclient
over gRPC.

The server and the measuring client both run in the Triton environment (``triton_venv``), in
processes of their own; the client is a worker that takes one JSON request per line, so its
rounds interleave with the other systems' like any case here. Its timings are taken inside the
worker, around the tritonclient calls only.
"""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from ..context import BenchContext
from ..frames import FrameSize
from ..modelrunner_server import REPO_ROOT
from ..processes import ServerProcess, free_port, stop_group
from ..rounds import IDENTITY, LOCKSTEP, STREAM, TRITON, Case
from ..triton_venv import TritonVenv, ensure_triton_venv

logger = logging.getLogger(__name__)

SCRIPT = Path(__file__).resolve().parent.parent / "triton_identity.py"


class TritonSkipped(Exception):
    """Triton is left out of this run (its environment could not be set up); not a failure."""


class TritonWorker:
    """The measuring client process: ``request({"op": ...})`` returns its JSON reply."""

    def __init__(self, python: Path, log_path: Path) -> None:
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [str(python), str(SCRIPT), "client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._replies: queue.Queue[bytes] = queue.Queue()
        self._reader = threading.Thread(
            target=self._read, args=(self.process.stdout,), name="triton-worker", daemon=True
        )
        self._reader.start()

    def _read(self, stdout: IO[bytes]) -> None:
        for line in stdout:
            self._replies.put(line)
        self._replies.put(b"")

    def request(self, request: dict[str, Any], *, timeout: float = 600) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request).encode() + b"\n")
        self.process.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"Triton worker gave no answer to {request['op']} in {timeout} s"
            ) from None
        if not line:
            raise RuntimeError(f"Triton worker exited (code {self.process.poll()})")
        reply: dict[str, Any] = json.loads(line)
        if not reply.pop("ok", False):
            raise RuntimeError(f"Triton worker: {reply.get('error')}")
        return reply

    def close(self) -> None:
        try:
            if self.process.poll() is None and self.process.stdin is not None:
                self.process.stdin.write(b'{"op": "quit"}\n')
                self.process.stdin.close()
                self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            pass
        stop_group(self.process, "triton-client", grace=5)
        self._log.close()

    def __enter__(self) -> TritonWorker:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def prepare_venv(ctx: BenchContext) -> TritonVenv:
    try:
        return ensure_triton_venv(log_path=ctx.log_dir / "triton-venv-setup.log")
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        raise TritonSkipped(f"the Triton environment could not be set up: {e}") from e


def triton_cases(ctx: BenchContext, sizes: list[FrameSize]) -> tuple[list[Case], dict[str, str]]:
    """The cases, and facts for the results (versions, setup time)."""
    venv = prepare_venv(ctx)
    grpc_port, http_port, metrics_port = free_port(), free_port(), free_port()
    server = ctx.stack.enter_context(
        ServerProcess(
            "triton-server",
            [
                str(venv.python),
                str(SCRIPT),
                "serve",
                "--grpc-port",
                str(grpc_port),
                "--http-port",
                str(http_port),
                "--metrics-port",
                str(metrics_port),
            ],
            ctx.log_dir / "triton-server.log",
            cwd=REPO_ROOT,
        )
    )
    worker = ctx.stack.enter_context(TritonWorker(venv.python, ctx.log_dir / "triton-client.log"))
    server.wait_ready(
        lambda: (
            worker.request({"op": "connect", "url": f"127.0.0.1:{grpc_port}", "timeout": 1})
            is not None
        ),
        timeout=180,
    )
    facts = {
        f"triton venv {name}": version
        for name, version in worker.request({"op": "versions"})["versions"].items()
    }
    if venv.created:
        facts["triton venv setup seconds (this run)"] = f"{venv.setup_seconds:.0f}"
    cases = worker_cases(ctx, worker, sizes, TRITON, where="")
    return cases, facts


def worker_cases(
    ctx: BenchContext, worker: TritonWorker, sizes: list[FrameSize], system: str, *, where: str
) -> list[Case]:
    """Lockstep ``infer`` and stream cases of a connected worker, one pair per size (the Triton
    system's, and modelrunner's V2 endpoint's with ``where`` saying so in the call)."""
    in_flight = ctx.settings.max_in_flight
    cases = []
    for size in sizes:
        shape = list(size.shape)

        def lockstep(n: int, shape: list[int] = shape) -> float:
            return float(worker.request({"op": "lockstep", "shape": shape, "frames": n})["seconds"])

        def stream(n: int, shape: list[int] = shape) -> float:
            request = {"op": "stream", "shape": shape, "frames": n, "max_in_flight": in_flight}
            return float(worker.request(request)["seconds"])

        def check(shape: list[int] = shape) -> None:
            worker.request({"op": "check", "shape": shape})

        cases.append(
            Case(
                system,
                LOCKSTEP,
                IDENTITY,
                size.label,
                size.nbytes,
                call=f"tritonclient.grpc infer{where}",
                run=lockstep,
                check=check,
                min_frames=ctx.settings.lockstep_min_frames,
            )
        )
        cases.append(
            Case(
                system,
                STREAM,
                IDENTITY,
                size.label,
                size.nbytes,
                call=f"tritonclient.grpc async_stream_infer, {in_flight} in flight",
                run=stream,
                min_frames=ctx.settings.stream_min_frames,
            )
        )
    return cases
