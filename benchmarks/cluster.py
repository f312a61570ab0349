"""Throughput of N concurrent frame streams against 1, 2 and 4 CPU runtimes on a local Ray
cluster (``modelrunner serve --ray`` as a library), the ONNX identity model on every runtime.

    python -m benchmarks.cluster                      # 4 streams, 1/2/4 runtimes, 256x256
    python -m benchmarks.cluster --streams 8 --runtimes 1,2 --side 512 --frames 300

Every runtime is its own Ray worker process; the streams are threads of this process, each its
own client, routed by the control service (placement spreads them: ``spread_queue_depth=1``).
On a machine with few cores the figure is the cost of the extra processes and hops, not a
speed-up: read it with ``nproc``. Not part of ``benchmarks.run --smoke`` (Ray takes ~20 s to
start). Results go to ``cluster.json`` in a new folder under ``benchmarks/runs/`` unless ``--out``
names one (``--out benchmarks/results`` refreshes the tracked figures).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from .local_ray import local_ray
from .modelrunner_server import IDENTITY_MIN_SIZE, IDENTITY_STEP, _identity_builder
from .output_folders import run_folder

logger = logging.getLogger("benchmarks.cluster")


def _streams(address: str, model_id: str, streams: int, frames: int, side: int) -> float:
    """Frames per second of ``streams`` concurrent streams of ``frames`` frames each."""
    from modelrunner.client import ModelRunnerClient

    frame = np.ones((1, 1, side, side), np.float32)
    clients = [ModelRunnerClient(address, timeout=300) for _ in range(streams)]
    start = threading.Barrier(streams + 1)
    failures: list[BaseException] = []

    def run(client: ModelRunnerClient) -> None:
        try:
            start.wait()
            count = sum(1 for _ in client.predict_stream(model_id, (frame for _ in range(frames))))
            assert count == frames
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)

    threads = [threading.Thread(target=run, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    for c in clients:
        c.close()
    if failures:
        raise failures[0]
    return streams * frames / elapsed


def _row(
    setup: str, warm: int, streams: int, frames: int, side: int, rate: float
) -> dict[str, object]:
    return {
        "setup": setup,
        "runtimes_with_the_model": warm,
        "streams": streams,
        "frames_per_stream": frames,
        "side": side,
        "frames_per_s": round(rate, 1),
        "ms_per_frame": round(1000 / rate, 3),
    }


def measure(runtimes: list[int], streams: int, frames: int, side: int) -> list[dict[str, object]]:
    from modelrunner.client import ModelRunnerClient
    from modelrunner.cluster.ray_serving import RayPlan, start_ray_serving
    from modelrunner.serving import start_embedded
    from modelrunner.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        package = _identity_builder()(
            Path(tmp) / "identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
        )
        # the same streams against `modelrunner serve` without Ray: one process, one runtime
        settings = Settings(
            host="127.0.0.1", port=0, flight_port=0, cache_dir=Path(tmp) / "c", log_level="WARNING"
        )
        with start_embedded(settings) as running, ModelRunnerClient(running.address) as client:
            model_id = client.add_model(package).id
            _streams(running.address, model_id, streams, 20, side)
            rate = _streams(running.address, model_id, streams, frames, side)
        logger.info("embedded runtime (no Ray), %d streams: %.0f frames/s", streams, rate)
        rows.append(_row("serve (no Ray)", 1, streams, frames, side, rate))
    with local_ray(max(runtimes)), tempfile.TemporaryDirectory() as tmp:
        package = _identity_builder()(
            Path(tmp) / "identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
        )
        for count in runtimes:
            settings = Settings(
                host="127.0.0.1",
                port=0,
                cache_dir=Path(tmp) / f"cache-{count}",
                heartbeat_interval_s=1.0,
                spread_queue_depth=1,
                log_level="WARNING",
            )
            with start_ray_serving(settings, RayPlan("local", cpu_runtimes=count)) as (
                running,
                _,
            ):
                with ModelRunnerClient(running.address) as client:
                    model_id = client.add_model(package).id
                # warm-up: the streams spread and every runtime loads the model
                _streams(running.address, model_id, max(streams, count), 20, side)
                time.sleep(settings.heartbeat_interval_s * 1.5)
                rate = _streams(running.address, model_id, streams, frames, side)
                with ModelRunnerClient(running.address) as client:
                    warm = sum(
                        1
                        for r in client.server_info().runtimes
                        if any(m.model_id == model_id for m in r.loaded_models)
                    )
            logger.info("%d runtime(s), %d streams: %.0f frames/s", count, streams, rate)
            rows.append(_row(f"Ray, {count} runtime(s)", warm, streams, frames, side, rate))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster", description=__doc__)
    parser.add_argument("--runtimes", default="1,2,4", help="runtime counts (default 1,2,4)")
    parser.add_argument("--streams", type=int, default=4, help="concurrent streams (default 4)")
    parser.add_argument("--frames", type=int, default=300, help="frames per stream (default 300)")
    parser.add_argument("--side", type=int, default=256, help="frame side (default 256)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: a new one under benchmarks/runs/)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (args.side - IDENTITY_MIN_SIZE) % IDENTITY_STEP:
        parser.error(f"--side must be {IDENTITY_MIN_SIZE} + n*{IDENTITY_STEP}")
    rows = measure([int(n) for n in args.runtimes.split(",")], args.streams, args.frames, args.side)
    print(f"\n{os.cpu_count()} CPU cores on this machine\n")
    print("| setup | runtimes with the model | streams | side | frames/s | ms/frame |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['setup']} | {r['runtimes_with_the_model']} | {r['streams']} | "
            f"{r['side']} | {r['frames_per_s']:.0f} | {r['ms_per_frame']:.2f} |"
        )
    out = args.out or run_folder("cluster")
    out.mkdir(parents=True, exist_ok=True)
    (out / "cluster.json").write_text(
        json.dumps({"cpu_cores": os.cpu_count(), "rows": rows}, indent=2)
    )
    print(f"results in {out}/cluster.json")


if __name__ == "__main__":
    main()
