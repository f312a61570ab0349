"""Run the benchmark suite: ``python -m benchmarks.run`` (full) or ``--smoke`` (CI, seconds).

Systems (``--systems``, comma-separated, default all):

* ``echo``: the ceiling, a bare Arrow Flight echo server in another process;
* ``modelrunner``: the identity model through ``client.predict`` and ``client.predict_stream``;
* ``secured``: the same against a server with ``--auth``, and one with ``--auth`` and TLS on
  both planes (what security costs);
* ``clients``: the identity from every kind of client: tritonclient over the Open Inference
  Protocol (V2, lockstep and stream), a raw pyarrow Flight client, the Node.js example over
  Flight and V2 (against the ``modelrunner`` system's server: run both for the ratios);
* ``triton``: PyTriton + tritonclient (gRPC) serving the identity (own environment, set up on
  demand in ``~/.cache/modelrunner-benchmarks/triton-venv``, outside the repository);
* ``unet2d``: ``unet2d_nuclei_broad`` through modelrunner against bioimageio.core in process;
* ``floor`` (raw torch): ``unet2d_nuclei_broad``'s TorchScript network alone on the device, and
  numpy -> device -> network -> numpy, with cudnn autotuning: the floor for unet2d;
* ``batching``: a tiny convolution with a free batch axis, streamed one frame per call and with
  waiting frames stacked along the batch axis;
* ``processing``: a model whose cost is its processing (percentiles, clip, sigmoid around an
  identity) through modelrunner against bioimageio.core in process, at each frame size;
* ``core_backend``: ``bioimageio.core.predict`` with modelrunner pipelines
  (``modelrunner.client.create_prediction_pipeline``, processing remote and local) against a
  pipeline in process, on the processing-heavy model, at each frame size (not in a plain run:
  ``--systems core_backend``);
* ``memory``: modelrunner's peak memory for a tiled prediction, and a long stream;
* ``overhead``: modelrunner's own work per call without the network (client and runtime), to
  show where a lockstep frame's time goes beyond the echo ceiling.

Writes ``results.md``, ``results.json``, ``throughput.png`` and the servers' logs to ``--out``
(default: a new folder under ``benchmarks/runs/``, ignored by git; ``--out benchmarks/results``
refreshes the tracked figures) and prints the tables. Exits 1 when a system failed (Triton skipped for want of its environment is not a
failure), else 0: targets missed are results, not failures.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path

from .context import BenchContext, Settings
from .frames import FrameSize, parse_sizes
from .machine import describe_machine, load_average
from .modelrunner_server import REPO_ROOT
from .output_folders import run_folder
from .ratios import compute_ratios
from .report import Report, ratio_table, throughput_table, write
from .rounds import Case, describe_error, run_rounds

logger = logging.getLogger("benchmarks.run")

SYSTEMS = (
    "echo",
    "modelrunner",
    "clients",
    "secured",
    "triton",
    "unet2d",
    "processing",
    "floor",
    "batching",
    "core_backend",
    "memory",
    "overhead",
)
CPU_SYSTEMS = (
    "echo",
    "modelrunner",
    "clients",
    "secured",
    "triton",
    "unet2d",
    "processing",
    "memory",
    "overhead",
)
"""What a plain run measures."""
DEVICE_SYSTEMS = ("echo", "floor", "unet2d", "batching", "processing")
"""What ``--device cuda`` measures: the raw-torch floor, unet2d (TorchScript) in process and
through modelrunner, lockstep, stream and tiled, batching, and the processing-heavy model."""
FULL_SIZES = "512,2048"
SMOKE_SIZES = "64,128"
SMOKE_INCLUDES_TRITON = True
"""Setting up the Triton environment from scratch took 23 s on the 2-core CI machine (pip,
cold cache; Triton then starts in about 3 s), under the 2 minutes the issue allows a smoke run
for it. Were it slower, smoke runs would skip Triton with a note."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="modelrunner against a bare Flight echo, Triton and in-process bioimageio.core",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, few rounds (CI)")
    parser.add_argument(
        "--systems",
        default=None,
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument(
        "--sizes",
        default=None,
        help=f"frame sides in pixels (default {FULL_SIZES}; smoke {SMOKE_SIZES})",
    )
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 5; smoke 2)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: a new one under benchmarks/runs/, not tracked by git; "
        "--out benchmarks/results refreshes the figures the READMEs quote)",
    )
    parser.add_argument(
        "--long-stream",
        type=int,
        default=None,
        metavar="FRAMES",
        help="frames of the memory system's long stream (default 10000; smoke 200)",
    )
    parser.add_argument(
        "--long-stream-side",
        type=int,
        default=None,
        metavar="PIXELS",
        help="frame side of the long stream (default 512; smoke 64)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="where models run: cpu (default) or cuda[:N]; with cuda and no --systems, the GPU "
        + f"set: {','.join(DEVICE_SYSTEMS)}",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.systems is None:
        on_gpu = args.device.startswith("cuda")
        args.systems = ",".join(DEVICE_SYSTEMS if on_gpu else CPU_SYSTEMS)
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(systems) - set(SYSTEMS))
    if unknown:
        parser.error(f"unknown systems {unknown}; choose from {', '.join(SYSTEMS)}")
    args.systems = systems
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.long_stream is not None and args.long_stream < 1:
        parser.error("--long-stream must be at least 1 frame")
    if args.long_stream_side is not None and args.long_stream_side < 1:
        parser.error("--long-stream-side must be at least 1 pixel")
    try:
        args.sizes = parse_sizes(args.sizes or (SMOKE_SIZES if args.smoke else FULL_SIZES))
    except ValueError as e:
        parser.error(str(e))
    if args.out is None:
        args.out = run_folder("smoke" if args.smoke else "run")
    return args


def _guarded(
    what: str, errors: list[str], build: Callable[[], list[Case]], notes: list[str]
) -> list[Case]:
    from .systems.triton import TritonSkipped
    from .systems.unet2d import ZooMissing

    try:
        return build()
    except (TritonSkipped, ZooMissing) as e:
        logger.warning("%s skipped: %s", what, e)
        notes.append(f"{what} skipped: {e}")
    except Exception as e:
        logger.exception("%s could not be set up", what)
        errors.append(f"{what}: setup failed: {describe_error(e)}")
    return []


def run(args: argparse.Namespace) -> Report:
    settings = replace(
        (Settings.smoke_test if args.smoke else Settings.full)(args.rounds), device=args.device
    )
    if args.long_stream is not None or args.long_stream_side is not None:
        settings = replace(
            settings,
            long_stream_frames=args.long_stream or settings.long_stream_frames,
            long_stream_side=args.long_stream_side or settings.long_stream_side,
            long_stream_seconds=3600.0,  # a stream asked for by length runs to its end
        )
    sizes: list[FrameSize] = args.sizes
    systems: list[str] = args.systems
    out: Path = args.out
    notes: list[str] = []
    errors: list[str] = []
    facts = describe_machine(REPO_ROOT)
    started = time.monotonic()
    report = Report(
        command=" ".join(["python -m benchmarks.run", shlex.join(args.argv)]).strip(),
        settings={
            "rounds": settings.rounds,
            "round_seconds": settings.round_seconds,
            "max_in_flight": settings.max_in_flight,
            "sizes": ",".join(s.label for s in sizes),
            "systems": ",".join(systems),
            "smoke": settings.smoke,
            "device": settings.device,
        },
        machine=facts,
        results=[],
        ratios=[],
        notes=notes,
        errors=errors,
    )
    with tempfile.TemporaryDirectory(prefix="modelrunner-bench-") as tmp:
        workdir = Path(tmp)
        with ExitStack() as stack:
            ctx = BenchContext(stack, workdir, out, settings)
            cases: list[Case] = []
            if "echo" in systems:
                from .systems.echo import echo_cases

                cases += _guarded("flight echo", errors, lambda: echo_cases(ctx, sizes), notes)
            if "modelrunner" in systems:
                from .systems.modelrunner import modelrunner_cases

                cases += _guarded(
                    "modelrunner", errors, lambda: modelrunner_cases(ctx, sizes), notes
                )
            if "clients" in systems:
                cases += _guarded("clients", errors, lambda: _clients(ctx, sizes, notes), notes)
            if "secured" in systems:
                from .rounds import AUTHENTICATED, SECURED
                from .systems.modelrunner import modelrunner_cases

                for system in (AUTHENTICATED, SECURED):
                    build = partial(modelrunner_cases, ctx, sizes, system=system)
                    cases += _guarded(system, errors, build, notes)
            if "triton" in systems:
                if settings.smoke and not SMOKE_INCLUDES_TRITON:
                    notes.append("Triton skipped in smoke mode: its environment takes too long")
                else:
                    cases += _guarded("triton", errors, lambda: _triton(ctx, sizes, facts), notes)
            if "floor" in systems:
                from .systems.network_floor import floor_cases

                cases += _guarded("raw torch floor", errors, lambda: floor_cases(ctx), notes)
            if "unet2d" in systems:
                from .systems.unet2d import in_process_case, remote_cases

                cases += _guarded(
                    "unet2d in-process", errors, lambda: [in_process_case(ctx)], notes
                )
                cases += _guarded("unet2d modelrunner", errors, lambda: remote_cases(ctx), notes)
            if "batching" in systems:
                from .systems.batching import batching_cases

                cases += _guarded("batching", errors, lambda: batching_cases(ctx), notes)
            if "processing" in systems:
                from .systems.processing import processing_cases

                cases += _guarded(
                    "heavy processing", errors, lambda: processing_cases(ctx, sizes), notes
                )
            if "core_backend" in systems:
                from .systems.core_backend import core_backend_cases

                cases += _guarded(
                    "bioimageio.core backend", errors, lambda: core_backend_cases(ctx, sizes), notes
                )
            report.results = run_rounds(
                cases,
                rounds=settings.rounds,
                round_seconds=settings.round_seconds,
                max_frames=settings.max_frames,
            )
        # The timed rounds' servers are stopped now: the memory measurements run alone.
        if "memory" in systems:
            _memory(report, workdir, out, settings)
        if "overhead" in systems:
            _overhead(report, workdir, sizes, settings)
    for r in report.results:
        if r.error is not None:
            errors.append(f"{r.system} {r.mode} {r.workload} {r.size}: {r.error}")
    facts["load average at end (1/5/15 min)"] = load_average()
    report.ratios = compute_ratios(report.results)
    report.seconds = time.monotonic() - started
    for path in write(report, out):
        logger.info("wrote %s", path)
    return report


def _clients(ctx: BenchContext, sizes: list[FrameSize], notes: list[str]) -> list[Case]:
    from .systems.clients import client_cases

    cases, skipped = client_cases(ctx, sizes)
    notes.extend(skipped)
    return cases


def _triton(ctx: BenchContext, sizes: list[FrameSize], facts: dict[str, str]) -> list[Case]:
    from .systems.triton import triton_cases

    cases, triton_facts = triton_cases(ctx, sizes)
    facts.update(triton_facts)
    return cases


def _memory(report: Report, workdir: Path, out: Path, settings: Settings) -> None:
    from .systems.memory import long_stream, tiled_memory

    with ExitStack() as stack:
        ctx = BenchContext(stack, workdir, out, settings)
        try:
            report.tiled = tiled_memory(ctx)
        except Exception as e:
            logger.exception("tiled memory measurement failed")
            report.errors.append(f"memory (tiled predict): {describe_error(e)}")
        try:
            report.stream = long_stream(ctx)
            if not report.stream.unchanged:
                report.errors.append("long stream: an output differed from its frame")
        except Exception as e:
            logger.exception("long stream measurement failed")
            report.errors.append(f"memory (long stream): {describe_error(e)}")


def _overhead(report: Report, workdir: Path, sizes: list[FrameSize], settings: Settings) -> None:
    from .systems.overhead import measure_overhead

    try:
        report.overhead = measure_overhead(
            workdir, sizes, seconds=0.3 if settings.smoke else settings.round_seconds
        )
    except Exception as e:
        logger.exception("overhead measurement failed")
        report.errors.append(f"overhead: {describe_error(e)}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("benchmarks").setLevel(logging.DEBUG if args.verbose else logging.INFO)
    report = run(args)
    print()
    print(ratio_table(report.ratios))
    print()
    print(throughput_table(report.results))
    print()
    for line in [*report.notes, *report.errors]:
        print(f"- {line}")
    print(f"results in {args.out} ({report.seconds:.0f} s)")
    if report.errors:
        print(f"{len(report.errors)} system(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
