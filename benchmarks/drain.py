"""How long ``modelrunner serve`` takes to exit on SIGTERM while a 400-frame ``predict_stream``
runs, and what the streaming client sees (issue 14).

    python -m benchmarks.drain                      # this checkout
    python -m benchmarks.drain --python /work/main/.venv/bin/python   # another checkout's server

The client paces frames (``--pace-ms``, default 100 ms: a microscope's rate), so the stream
would take 40 s to finish; SIGTERM goes out once 20 frames are answered. The server runs under
``--python`` (its interpreter, hence its modelrunner); the client is this checkout's.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from modelrunner.client import ModelRunnerClient

from .modelrunner_server import IDENTITY_MIN_SIZE, IDENTITY_STEP, _identity_builder
from .processes import ServerProcess, free_port


def _frames(count: int, pace_s: float) -> Iterator[np.ndarray]:
    for index in range(count):
        time.sleep(pace_s)
        yield np.full((256, 256), index, dtype="float32")


def measure(python: str, *, frames: int, pace_s: float, signal_after: int, workdir: Path) -> dict:
    port, flight_port = free_port(), free_port()
    command = [
        python, "-m", "modelrunner.app.cli", "serve", "--port", str(port),
        "--flight-port", str(flight_port), "--cache-dir", str(workdir / "cache"),
    ]  # fmt: skip
    env = {**os.environ, "MODELRUNNER_DESCRIPTION_WORKERS": "0"}
    server = ServerProcess("serve", command, workdir / "serve.log", env=env).start()
    try:
        address = f"127.0.0.1:{port}"
        with ModelRunnerClient(address, timeout=60, retry_s=0) as probe:
            server.wait_ready(lambda: bool(probe.list_models() is not None), timeout=120)
        package = _identity_builder()(
            workdir / "identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
        )
        with ModelRunnerClient(address, timeout=60, retry_s=30) as client:
            model_id = client.add_model(package).id
            client.load(model_id)
            answered = 0
            outcome = "completed"
            sent_at = [0.0]
            client_done_at = 0.0

            def consume() -> None:
                nonlocal answered, outcome, client_done_at
                try:
                    for _ in client.predict_stream(model_id, _frames(frames, pace_s)):
                        answered += 1
                        if answered == signal_after:
                            sent_at[0] = time.monotonic()
                            assert server.process is not None
                            server.process.send_signal(signal.SIGTERM)
                except Exception as e:  # noqa: BLE001 - the outcome is reported
                    outcome = f"{type(e).__name__}: {e} (frames_answered={getattr(e, 'frames_answered', None)})"
                client_done_at = time.monotonic()

            thread = threading.Thread(target=consume)
            thread.start()
            assert server.process is not None
            code = server.process.wait(timeout=600)
            exited_at = time.monotonic()
            thread.join(60)
        return {
            "server_python": python,
            "frames": frames,
            "pace_ms": pace_s * 1000,
            "sigterm_after_frames": signal_after,
            "exit_s": round(exited_at - sent_at[0], 2),
            "exit_code": code,
            "client_outcome": outcome,
            "client_ended_s": round(client_done_at - sent_at[0], 2),
            "frames_answered": answered,
        }
    finally:
        server.stop(grace=5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--pace-ms", type=float, default=100.0)
    parser.add_argument("--signal-after", type=int, default=20)
    parser.add_argument("--workdir", type=Path, help="keep the cache and server log here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="drain-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        result = measure(
            args.python,
            frames=args.frames,
            pace_s=args.pace_ms / 1000,
            signal_after=args.signal_after,
            workdir=workdir,
        )
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
