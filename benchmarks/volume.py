"""A volume larger than this machine's memory, predicted block by block (``client.predict_volume``,
``modelrunner predict big.ome.zarr -o out.ome.zarr``), with each process's peak memory.

    python -m benchmarks.volume                        # 24.5 GiB uint16 OME-Zarr (more than RAM)
    python -m benchmarks.volume --size 0.5             # a small run (about a minute)
    python -m benchmarks.volume --ray 1,2,4 --size 1   # 1, 2 and 4 runtimes on a local Ray cluster

It writes its own volume (NGFF 0.5, uint16, planes of ``--side`` x ``--side``, zstd chunks of
compressible synthetic data, so input and output together stay a few GB on disk) into a scratch
folder it removes, checks the free disk first, then predicts it with the ONNX identity model
(``tests.tiny_models``; a 2-D model: every plane is a sample, in 2048x2048 blocks) on a
``modelrunner serve`` in its own process, the client in a process of its own:

- **volume**: end to end, read -> predict -> write (and the output's pyramid, timed apart), MB/s
  of input; the peak RSS of the client process and of the server's process tree;
- **memory**: the same blocks from memory (a plane held in RAM, read as the volume's blocks),
  predicted by the same pipeline with nothing written: what reading and writing Zarr cost.

With ``--ray``, the volume goes through ``serve --ray`` with 1, 2, 4 CPU runtimes (each a Ray
worker process; blocks spread over all of them). On a 2-core machine this shows the cost of more
processes, not a speed-up. Results go to ``benchmarks/results/volume.json``. Not part of
``benchmarks.run --smoke``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from .local_ray import local_ray
from .machine import describe_machine, load_average
from .memory import PeakRss
from .modelrunner_server import (
    IDENTITY_MIN_SIZE,
    IDENTITY_STEP,
    REPO_ROOT,
    _identity_builder,
    start_modelrunner,
)

logger = logging.getLogger("benchmarks.volume")

GiB = 1024**3
BLOCK_SIDE = 2048
DISK_MARGIN = 5 * GiB
"""Free disk the run leaves to everyone else, beyond its own estimate."""


_PATTERNS: dict[int, np.ndarray] = {}


def plane(z: int, side: int) -> np.ndarray:
    """A synthetic uint16 plane: squares of 64 pixels whose values shift with z (compresses
    well, and every block differs); a table lookup per plane, so writing is quick."""
    base = _PATTERNS.get(side)
    if base is None:
        y, x = np.ogrid[0:side, 0:side]
        base = _PATTERNS.setdefault(side, ((x // 64 + y // 64) % 17).astype(np.uint8))
    table = ((np.arange(17) + z) % 17 * 200 + 100).astype(np.uint16)
    return table[base]


def write_volume(path: Path, planes: int, side: int) -> None:
    """An OME-Zarr (NGFF 0.5) uint16 volume of ``planes`` planes, written plane by plane."""
    import zarr

    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    array = group.create_array(
        "0", shape=(planes, side, side), chunks=(1, 1024, 1024), dtype="uint16", fill_value=0
    )
    group.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "axes": [{"name": a, "type": "space", "unit": "micrometer"} for a in "zyx"],
                "datasets": [
                    {
                        "path": "0",
                        "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]}],
                    }
                ],
                "name": "synthetic",
            }
        ],
    }

    def write(z: int) -> None:
        array[z] = plane(z, side)

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for _ in pool.map(write, range(planes)):
            pass


def disk_use(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def estimate_disk(planes: int, side: int) -> int:
    """Bytes the input and output will take: one plane's compressed size, scaled (the float32
    output and its pyramid compress about like the input, times 2 for the wider type)."""
    with tempfile.TemporaryDirectory() as tmp:
        write_volume(Path(tmp) / "probe.ome.zarr", 1, side)
        one = disk_use(Path(tmp))
    return int(one * planes * (1 + 2 * 4 / 3) * 1.5)


# -- the client, in a process of its own --------------------------------------------------------


def client_volume(address: str, model: str, source: str, destination: str) -> dict[str, Any]:
    from modelrunner.client import ModelRunnerClient

    with ModelRunnerClient(address, timeout=None) as client:
        started = time.perf_counter()
        result = client.predict_volume(model, source, destination, progress=True)
        seconds = time.perf_counter() - started
    return {
        "blocks": result.blocks,
        "runtimes": result.runtimes,
        "input_bytes": result.input_bytes,
        "seconds": seconds,
        "predict_seconds": result.predict_seconds,
        "pyramid_seconds": result.seconds - result.predict_seconds,
        "predict_mb_s": result.megabytes_per_s,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def client_memory(address: str, model: str, planes: int, side: int, blocks: int) -> dict[str, Any]:
    """The volume's first ``blocks`` blocks read from a plane held in memory, predicted by the
    same pipeline as ``predict_volume``'s, with nothing written."""
    from modelrunner.client import ModelRunnerClient
    from modelrunner.client._volume_pipeline import BlockPipeline
    from modelrunner.client._volume_prediction import _plan, _routes_for_the_weights
    from modelrunner.client._volume_run import read_block
    from modelrunner.client._volume_sources import open_volume

    volume = np.broadcast_to(plane(0, side), (planes, side, side))
    with ModelRunnerClient(address, timeout=None) as client:
        image = open_volume(volume, axes="zyx")
        run = _plan(
            client, model, image, "unused.ome.zarr", level=0, channel=None, per_plane=False,
            keep_singletons=False, blocksize=None, weight_format=None, device=None,
            nan_policy="reject", source=volume,
        )  # fmt: skip
        todo = [b for b in run.grid.blocks() if not run.grid.is_empty(b)][:blocks]
        routes = _routes_for_the_weights(run, None)  # the weights predict_volume fixes
        nbytes = [0]

        def read(block: Any) -> np.ndarray:
            data = read_block(run, block)
            nbytes[0] += data.nbytes
            return data

        pipeline = BlockPipeline(
            read=read, routes=routes, write=lambda b, o: None, depth=2 * len(routes)
        )
        pipeline.run(todo[:4])  # warm-up: sessions open, the model loaded everywhere
        nbytes[0] = 0
        started = time.perf_counter()
        pipeline = BlockPipeline(
            read=read, routes=routes, write=lambda b, o: None, depth=2 * len(routes)
        )
        pipeline.run(todo)
        seconds = time.perf_counter() - started
    return {"blocks": len(todo), "seconds": seconds, "predict_mb_s": nbytes[0] / 1e6 / seconds}


def _run_client(*argv: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.volume", "--client", *argv],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- the runs -----------------------------------------------------------------------------------


def _identity(workdir: Path) -> Path:
    return _identity_builder()(workdir / "identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP)


def measure_serve(
    workdir: Path, source: Path, planes: int, side: int, memory_blocks: int
) -> list[dict[str, Any]]:
    rows = []
    with ExitStack() as stack:
        server = start_modelrunner(stack, workdir, workdir)
        model = server.add_and_load(_identity(workdir), "onnx")
        destination = workdir / "out.ome.zarr"
        with PeakRss(server.server.pid, interval=0.05) as server_rss:
            volume = _run_client("volume", server.address, model, str(source), str(destination))
        memory = _run_client(
            "memory", server.address, model, str(planes), str(side), str(memory_blocks)
        )
        rows.append(
            {
                "setup": "serve (one runtime)",
                **volume,
                "server_peak_rss": server_rss.peak,
                "output_disk_bytes": disk_use(destination),
                "memory_mb_s": memory["predict_mb_s"],
                "memory_blocks": memory["blocks"],
            }
        )
        shutil.rmtree(destination, ignore_errors=True)
    return rows


def measure_ray(workdir: Path, source: Path, counts: list[int]) -> list[dict[str, Any]]:
    from modelrunner.client import ModelRunnerClient
    from modelrunner.cluster.ray_serving import RayPlan, start_ray_serving
    from modelrunner.settings import Settings

    rows = []
    with local_ray(max(counts)):
        package = _identity(workdir)
        for count in counts:
            settings = Settings(
                host="127.0.0.1",
                port=0,
                cache_dir=workdir / f"cache-{count}",
                heartbeat_interval_s=1.0,
                log_level="WARNING",
            )
            with start_ray_serving(settings, RayPlan("local", cpu_runtimes=count)) as (running, _):
                with ModelRunnerClient(running.address) as client:
                    model = client.add_model(package).id
                    deadline = time.monotonic() + 60
                    while len(client.server_info().runtimes) < count:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{count} runtimes did not register in 60 s")
                        time.sleep(0.2)
                destination = workdir / f"ray-{count}.ome.zarr"
                volume = _run_client(
                    "volume", running.address, model, str(source), str(destination)
                )
                shutil.rmtree(destination, ignore_errors=True)
            logger.info("%d runtime(s): %.1f MB/s", count, volume["predict_mb_s"])
            rows.append({"setup": f"Ray, {count} runtime(s)", **volume})
    return rows


def _table(rows: list[dict[str, Any]], size: float, side: int) -> str:
    lines = [
        f"volume: {size:g} GiB uint16 ({side}x{side} planes), ONNX identity, blocks of "
        f"{BLOCK_SIDE}x{BLOCK_SIDE}; {os.cpu_count()} CPU cores, load {load_average()}",
        "",
        "| setup | blocks | runtimes | MB/s (Zarr in, Zarr out) | MB/s (same blocks from memory) "
        "| client peak RSS | server peak RSS | blocks s | pyramid s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        memory = f"{r['memory_mb_s']:.0f}" if "memory_mb_s" in r else ""
        server = f"{r['server_peak_rss'] / 2**20:.0f} MiB" if "server_peak_rss" in r else ""
        lines.append(
            f"| {r['setup']} | {r['blocks']} | {r['runtimes']} | {r['predict_mb_s']:.0f} | "
            f"{memory} | {r['peak_rss'] / 2**20:.0f} MiB | {server} | {r['predict_seconds']:.0f} | "
            f"{r['pyramid_seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.volume", description=__doc__)
    parser.add_argument("--size", type=float, default=24.5, help="GiB of input (default 24.5)")
    parser.add_argument("--side", type=int, default=4096, help="plane side (default 4096)")
    parser.add_argument("--scratch", type=Path, help="where the volume is written (removed)")
    parser.add_argument("--ray", help="runtime counts on a local Ray cluster, e.g. 1,2,4")
    parser.add_argument("--memory-blocks", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--client", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.client:
        mode, *rest = args.client
        if mode == "volume":
            result = client_volume(*rest)
        else:
            address, model, planes, side, blocks = rest
            result = client_memory(address, model, int(planes), int(side), int(blocks))
        print(json.dumps(result))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if (args.side - IDENTITY_MIN_SIZE) % IDENTITY_STEP:
        parser.error(f"--side must be {IDENTITY_MIN_SIZE} + n*{IDENTITY_STEP}")
    planes = max(1, round(args.size * GiB / (args.side * args.side * 2)))
    scratch = args.scratch or Path(tempfile.gettempdir())
    scratch.mkdir(parents=True, exist_ok=True)
    needed = estimate_disk(planes, args.side)
    free = shutil.disk_usage(scratch).free
    if free < needed + DISK_MARGIN:
        parser.error(
            f"{scratch} has {free / GiB:.1f} GiB free; the run needs about {needed / GiB:.1f} "
            f"GiB plus {DISK_MARGIN / GiB:.0f} GiB left for others: use --scratch or --size"
        )
    with tempfile.TemporaryDirectory(prefix="modelrunner-volume-", dir=scratch) as tmp:
        workdir = Path(tmp)
        source = workdir / "in.ome.zarr"
        started = time.perf_counter()
        write_volume(source, planes, args.side)
        logger.info(
            "wrote %d planes (%.1f GiB raw, %.2f GiB on disk) in %.0f s",
            planes, planes * args.side**2 * 2 / GiB, disk_use(source) / GiB,
            time.perf_counter() - started,
        )  # fmt: skip
        if args.ray:
            rows = measure_ray(workdir, source, [int(n) for n in args.ray.split(",")])
        else:
            rows = measure_serve(workdir, source, planes, args.side, args.memory_blocks)
    size = planes * args.side**2 * 2 / GiB
    print("\n" + _table(rows, size, args.side) + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    name = "volume-ray.json" if args.ray else "volume.json"
    (args.out / name).write_text(
        json.dumps(
            {"machine": describe_machine(REPO_ROOT), "size_gib": size, "rows": rows}, indent=2
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
