"""The Triton side of the benchmark: runs inside the Triton virtual environment, never imported by
the project's own code (it needs ``nvidia-pytriton``, ``tritonclient`` and numpy < 2).

Two commands:

* ``serve``: a PyTriton server whose model ``identity`` returns its float32 input unchanged
  (Triton's Python backend, on CPU), until SIGINT or SIGTERM.
* ``client``: a measuring worker speaking JSON lines on stdin/stdout, so the harness in the project
  environment can interleave Triton rounds with the other systems' rounds. Requests:
  ``{"op": "connect", "url": "127.0.0.1:PORT", "model": NAME}`` (model default ``identity``;
  modelrunner's V2 endpoint names its identity by model id), ``{"op": "check", "shape": [...]}``,
  ``{"op": "lockstep", "shape": [...], "frames": N}``,
  ``{"op": "stream", "shape": [...], "frames": N, "max_in_flight": K}``, ``{"op": "versions"}``,
  ``{"op": "quit"}``. Frames are random float32 arrays of the given shape, made once per shape.
  Every reply is one JSON object: ``{"ok": true, ...}`` or ``{"ok": false, "error": "..."}``.
  Timed replies carry ``seconds`` measured around the calls only.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any

import numpy as np

MODEL = "identity"
INPUT = "input"
OUTPUT = "output"

logger = logging.getLogger("triton_identity")


def serve(grpc_port: int, http_port: int, metrics_port: int) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    @batch  # type: ignore[misc]
    def identity(**inputs: np.ndarray) -> dict[str, np.ndarray]:
        return {OUTPUT: inputs[INPUT]}

    config = TritonConfig(
        grpc_address="127.0.0.1",
        grpc_port=grpc_port,
        http_address="127.0.0.1",
        http_port=http_port,
        metrics_port=metrics_port,
        allow_metrics=False,
        allow_cpu_metrics=False,
        allow_gpu_metrics=False,
    )
    # SIGTERM ends serve() like SIGINT does, so PyTriton stops tritonserver and its stubs.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with Triton(config=config) as triton:
        triton.bind(
            model_name=MODEL,
            infer_func=identity,
            inputs=[Tensor(name=INPUT, dtype=np.float32, shape=(-1, -1, -1))],
            outputs=[Tensor(name=OUTPUT, dtype=np.float32, shape=(-1, -1, -1))],
            config=ModelConfig(max_batch_size=8),
            strict=False,
        )
        triton.serve()


class Worker:
    """Measures tritonclient gRPC calls on one frame, as the harness asks."""

    def __init__(self) -> None:
        self.client: Any = None
        self.model = MODEL
        self.frames: dict[tuple[int, ...], np.ndarray] = {}

    def frame(self, shape: list[int]) -> np.ndarray:
        key = tuple(int(s) for s in shape)
        if key not in self.frames:
            self.frames[key] = np.random.default_rng(0).random(key, dtype=np.float32)
        return self.frames[key]

    def handle(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request["op"]
        if op == "connect":
            self.model = request.get("model", MODEL)
            return self.connect(request["url"], float(request.get("timeout", 120)))
        if op == "check":
            frame = self.frame(request["shape"])
            if not np.array_equal(self._infer(frame), frame):
                raise RuntimeError("Triton did not return the frame unchanged")
            return {}
        if op == "lockstep":
            frame = self.frame(request["shape"])
            return {"seconds": self.lockstep(frame, int(request["frames"]))}
        if op == "stream":
            frame = self.frame(request["shape"])
            frames, in_flight = int(request["frames"]), int(request["max_in_flight"])
            return {"seconds": self.stream(frame, frames, in_flight)}
        if op == "versions":
            from importlib.metadata import PackageNotFoundError, version

            found = {}
            for name in ("nvidia-pytriton", "tritonclient", "numpy", "grpcio"):
                try:
                    found[name] = version(name)
                except PackageNotFoundError:  # the tritonclient-only environment has no server
                    pass
            return {"versions": found}
        raise ValueError(f"unknown op {op!r}")

    def connect(self, url: str, timeout: float) -> dict[str, Any]:
        import tritonclient.grpc as grpcclient

        self.client = grpcclient.InferenceServerClient(url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.client.is_model_ready(self.model):
                    return {}
            except Exception:  # noqa: BLE001 - not up yet: try again until the deadline
                pass
            time.sleep(0.2)
        raise TimeoutError(f"model {self.model!r} not ready at {url} after {timeout:.0f} s")

    @staticmethod
    def _inputs(frame: np.ndarray) -> list[Any]:
        # A new request tensor per frame, as for a camera's new frames (serializes the array).
        import tritonclient.grpc as grpcclient

        tensor = grpcclient.InferInput(INPUT, list(frame.shape), "FP32")
        tensor.set_data_from_numpy(frame)
        return [tensor]

    def _infer(self, frame: np.ndarray) -> np.ndarray:
        import tritonclient.grpc as grpcclient

        result = self.client.infer(
            self.model, self._inputs(frame), outputs=[grpcclient.InferRequestedOutput(OUTPUT)]
        )
        return result.as_numpy(OUTPUT)

    def lockstep(self, frame: np.ndarray, frames: int) -> float:
        start = time.perf_counter()
        for _ in range(frames):
            self._infer(frame)
        return time.perf_counter() - start

    def stream(self, frame: np.ndarray, frames: int, max_in_flight: int) -> float:
        """One bidirectional gRPC stream, at most ``max_in_flight`` requests unanswered."""
        import tritonclient.grpc as grpcclient

        credits = threading.Semaphore(max_in_flight)
        done = threading.Event()
        errors: list[str] = []
        received = 0
        lock = threading.Lock()

        def on_result(result: Any, error: Any) -> None:
            nonlocal received
            if error is not None:
                errors.append(str(error))
            else:
                result.as_numpy(OUTPUT)
            with lock:
                received += 1
                if received == frames:
                    done.set()
            credits.release()

        outputs = [grpcclient.InferRequestedOutput(OUTPUT)]
        start = time.perf_counter()
        self.client.start_stream(callback=on_result)
        try:
            for i in range(frames):
                credits.acquire()
                self.client.async_stream_infer(
                    self.model, self._inputs(frame), outputs=outputs, request_id=str(i)
                )
            if not done.wait(timeout=600):
                raise TimeoutError(f"only {received} of {frames} stream results arrived")
        finally:
            self.client.stop_stream()
        seconds = time.perf_counter() - start
        if errors:
            raise RuntimeError(f"{len(errors)} stream requests failed, first: {errors[0]}")
        return seconds


def client_worker() -> None:
    worker = Worker()
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        if request.get("op") == "quit":
            break
        try:
            reply: dict[str, Any] = {"ok": True, **worker.handle(request)}
        except Exception as e:  # noqa: BLE001 - every failure goes back to the harness as data
            reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    if worker.client is not None:
        worker.client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve")
    s.add_argument("--grpc-port", type=int, required=True)
    s.add_argument("--http-port", type=int, required=True)
    s.add_argument("--metrics-port", type=int, required=True)
    sub.add_parser("client")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if args.command == "serve":
        serve(args.grpc_port, args.http_port, args.metrics_port)
    else:
        client_worker()


if __name__ == "__main__":
    main()
