"""How fast a cancelled prediction stops on the server.

A tiled prediction of a large image (the tiny halo model of ``tests.tiny_models``, many small
tiles) is started and cancelled once the runtime has worked on it for a while; the figure is the
time from the cancel to the runtime's count of predictions in progress reaching 0
(``RuntimeFlightServer.active_exchanges``), and how many tiles ran in all. Ways to cancel:

- ``close``: ``client.close()`` from another thread while ``client.predict`` runs;
- ``kill``: the client's process is killed (SIGKILL) mid-prediction;
- ``sigint``: ``modelrunner predict ... --server ADDR`` gets SIGINT (Ctrl-C);
- ``embedded``: ``modelrunner predict`` without a server (its private embedded runner) gets
  SIGINT; the server is inside the process, so the figure is the time until the process exits.

``python -m benchmarks.cancel_latency [--side 8192] [--blocksize 4] [--after 2]
[--ways close,kill,sigint,embedded]``
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelrunner.client import ModelRunnerClient
from modelrunner.runtime_flight.server import RuntimeFlightServer
from modelrunner.serving import start_embedded
from modelrunner.settings import Settings

WAYS = ("close", "kill", "sigint", "embedded")
RUN_FOR_S = 2.0
"""How long the prediction runs on the server before it is cancelled (``--after``)."""


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.005) -> float:
    """Seconds until ``condition`` holds (inf when it does not within ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            return float("inf")
        time.sleep(step)
    return time.monotonic() - start


def _client_script(address: str, model_id: str, image: Path, blocksize: int) -> str:
    return (
        "import numpy as np\n"
        "from modelrunner.client import ModelRunnerClient\n"
        f"c = ModelRunnerClient({address!r}, timeout=None)\n"
        f"c.predict({model_id!r}, np.load({str(image)!r}), blocksize={blocksize})\n"
    )


def measure(
    way: str,
    *,
    address: str,
    runtime: RuntimeFlightServer | None,
    model: str,
    image: Path,
    blocksize: int,
    work: Path,
    env: dict[str, str],
    after: float = RUN_FOR_S,
) -> dict[str, float]:
    """One cancelled prediction: seconds from the cancel until the server stopped, and more."""
    tiles = {"done": 0, "total": 0}
    if way == "close":
        assert runtime is not None
        client = ModelRunnerClient(address, timeout=None)
        outcome: list[str] = []

        def progress(event: object) -> None:
            if getattr(event, "stage", "") == "predict":
                tiles["done"], tiles["total"] = event.done, event.total  # type: ignore[attr-defined]

        def run() -> None:
            try:
                client.predict(model, np.load(image), blocksize=blocksize, progress=progress)
                outcome.append("finished")
            except BaseException as e:  # noqa: BLE001 - reported
                outcome.append(type(e).__name__)

        thread = threading.Thread(target=run)
        thread.start()
        _wait(lambda: runtime.active_exchanges > 0, 60)
        time.sleep(after)
        cancelled_at = time.monotonic()
        client.close()
        stopped = _wait(lambda: runtime.active_exchanges == 0, 300)
        thread.join()
        return {
            "server_stopped_s": stopped,
            "call_ended_s": time.monotonic() - cancelled_at,
            "tiles_done": tiles["done"],
            "tiles_total": tiles["total"],
            "outcome": outcome[0],
        }  # type: ignore[dict-item]
    if way == "kill":
        assert runtime is not None
        script = _client_script(address, model, image, blocksize)
        process = subprocess.Popen([sys.executable, "-c", script], env=env)
        _wait(lambda: runtime.active_exchanges > 0, 60)
        time.sleep(after)
        cancelled_at = time.monotonic()
        process.kill()
        stopped = _wait(lambda: runtime.active_exchanges == 0, 300)
        process.wait()
        return {"server_stopped_s": stopped, "call_ended_s": time.monotonic() - cancelled_at}
    output = work / f"{way}.npy"
    command = [
        sys.executable,
        "-m",
        "modelrunner.app.cli",
        "predict",
        model,
        str(image),
        "-o",
        str(output),
        "--blocksize",
        str(blocksize),
    ]
    if way == "sigint":
        command += ["--server", address]
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    if runtime is not None:
        _wait(lambda: runtime.active_exchanges > 0, 120)
        time.sleep(after)
    else:
        time.sleep(after + 8.0)  # the embedded runner starts and loads the model first
    cancelled_at = time.monotonic()
    process.send_signal(signal.SIGINT)
    stopped = (
        _wait(lambda: runtime.active_exchanges == 0, 300) if runtime is not None else float("nan")
    )
    _, stderr = process.communicate(timeout=600)
    exited = time.monotonic() - cancelled_at
    lines = stderr.strip().splitlines()
    return {
        "server_stopped_s": stopped if runtime is not None else exited,
        "call_ended_s": exited,
        "exit_code": process.returncode,
        "last_line": lines[-1][-60:] if lines else "",
        "output_left": output.exists(),
    }  # type: ignore[dict-item]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8192)
    parser.add_argument("--blocksize", type=int, default=4, help="n of the halo model's tiles")
    parser.add_argument("--ways", default=",".join(WAYS))
    parser.add_argument(
        "--after", type=float, default=RUN_FOR_S, help="seconds of work before the cancel"
    )
    args = parser.parse_args(argv)
    from tests.tiny_models import build_halo_model

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        package = build_halo_model(work / "halo")
        image = work / "image.npy"
        np.save(image, np.random.default_rng(0).random((args.side, args.side), np.float32))
        settings = Settings(
            host="127.0.0.1",
            port=0,
            flight_port=0,
            cache_dir=work / "cache",
            path_source_roots=[work],
        )
        env = {
            **os.environ,
            "MODELRUNNER_SERVER": "",
            "MODELRUNNER_ADDRESS": "127.0.0.1:9",
            "MODELRUNNER_CACHE_DIR": str(work / "cache-embedded"),
            "PYTHONWARNINGS": "ignore",
        }
        with start_embedded(settings) as running:
            assert running.runtime is not None
            with ModelRunnerClient(running.address) as client:
                model = client.add_model(package).id
                client.load(model)
            print(
                f"{args.side}x{args.side} float32, halo model, blocksize {args.blocksize}, "
                f"cancelled after {args.after:g} s"
            )
            for way in args.ways.split(","):
                runtime = running.runtime.server if way != "embedded" else None
                target = str(package) if way == "embedded" else model
                result = measure(
                    way,
                    address=running.address,
                    runtime=runtime,
                    model=target,
                    image=image,
                    blocksize=args.blocksize,
                    work=work,
                    env=env,
                    after=args.after,
                )
                print(
                    way,
                    {k: round(v, 3) if isinstance(v, float) else v for k, v in result.items()},
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
