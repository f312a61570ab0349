"""Soak: N concurrent frame streams for a long time, with a runtime restart in the middle
(issue 14). Not a test: a measurement, reported in benchmarks/README.md.

    python -m benchmarks.soak                         # 4 streams, 10 minutes (the full run)
    python -m benchmarks.soak --duration 150          # what fits a short session
    python -m benchmarks.soak --smoke                 # 20 s, 2 streams: does it run at all

``modelrunner serve --no-runtime`` and a ``modelrunner runtime --control ...`` run as
subprocesses; halfway through, the runtime gets SIGTERM (``--kill``: SIGKILL) and a new one
starts on the same port. Each stream sends frames whose pixels hold their sequence number, so
a lost or reordered frame shows; a stream that ends with UnavailableError resumes from its
``frames_answered`` on a new stream. Every ``--sample-s`` seconds the control service's and the
runtime's RSS, threads and open files are sampled, with the frame latency percentiles of the
interval. RSS growth is measured from the end of the warm-up (``--warmup-s``) to the end, for
the control service over the whole run and for each runtime over its own life.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import psutil

from modelrunner import errors
from modelrunner.client import ModelRunnerClient

from .machine import cpu_model, gpus, load_average
from .modelrunner_server import IDENTITY_MIN_SIZE, IDENTITY_STEP, _identity_builder
from .output_folders import run_folder
from .processes import ServerProcess, free_port

logger = logging.getLogger(__name__)
RESULTS = "soak.json"
"""Written in a new folder under ``benchmarks/runs/`` unless ``--output`` names the file
(``--output benchmarks/results/soak.json`` refreshes the tracked one)."""


@dataclass
class StreamStats:
    answered: int = 0
    wrong: int = 0
    """Frames answered with another frame's pixels: lost or reordered."""
    interruptions: int = 0
    errors: list[str] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)
    """(time answered, seconds from send to answer)."""


def _frames(
    start: int, sent_at: dict[int, float], pace_s: float, size: int
) -> Iterator[np.ndarray]:
    index = start
    while True:
        time.sleep(pace_s)
        sent_at[index] = time.monotonic()
        yield np.full((size, size), index, dtype="float32")
        index += 1


def run_stream(
    address: str,
    model_id: str,
    stop: threading.Event,
    stats: StreamStats,
    *,
    pace_s: float,
    size: int,
    frames_per_stream: int,
) -> None:
    """Streams of ``frames_per_stream`` frames, one after another, until ``stop``; after an
    UnavailableError the next stream starts at the first frame not answered."""
    next_index = 0
    with ModelRunnerClient(address, timeout=60, retry_s=60) as client:
        while not stop.is_set():
            sent_at: dict[int, float] = {}
            start = next_index
            frames = _frames(start, sent_at, pace_s, size)
            limited = (next(frames) for _ in range(frames_per_stream))
            try:
                with client.predict_stream(model_id, limited, idle_timeout=30) as stream:
                    for outputs in stream:
                        now = time.monotonic()
                        got = outputs["output"].reshape(-1)
                        if got[0] != next_index or got[-1] != next_index:
                            stats.wrong += 1
                        stats.latencies.append((now, now - sent_at.pop(next_index, now)))
                        stats.answered += 1
                        next_index += 1
                        if stop.is_set():
                            break
            except errors.UnavailableError as e:
                stats.interruptions += 1
                answered = e.frames_answered if e.frames_answered is not None else 0
                if start + answered != next_index:
                    stats.errors.append(f"frames_answered {answered} but {next_index - start} seen")
                time.sleep(0.1)
            except errors.ModelRunnerError as e:
                stats.errors.append(f"{type(e).__name__}: {e}")
                time.sleep(0.5)


def _process_sample(pid: int) -> dict[str, float]:
    try:
        p = psutil.Process(pid)
        return {
            "rss_mib": round(p.memory_info().rss / 2**20, 1),
            "threads": p.num_threads(),
            "open_files": p.num_fds(),
        }
    except psutil.Error:
        return {}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    a = np.asarray(values) * 1000
    return {f"p{q}_ms": round(float(np.percentile(a, q)), 2) for q in (50, 95, 99)}


def soak(args: argparse.Namespace, workdir: Path) -> dict:
    port, flight_port = free_port(), free_port()
    address = f"127.0.0.1:{port}"
    env = {
        **os.environ,
        "MODELRUNNER_CACHE_DIR": str(workdir / "cache"),
        "MODELRUNNER_HEARTBEAT_INTERVAL_S": str(args.heartbeat_s),
        "MODELRUNNER_DESCRIPTION_WORKERS": "0",
    }
    py = [sys.executable, "-m", "modelrunner.app.cli"]
    control = ServerProcess(
        "control", [*py, "serve", "--no-runtime", "--port", str(port)], workdir / "control.log",
        env=env,
    ).start()  # fmt: skip
    runtime_command = [*py, "runtime", "--control", address, "--flight-port", str(flight_port)]
    runtimes = [ServerProcess("runtime-1", runtime_command, workdir / "runtime-1.log", env=env)]
    runtimes[0].start()
    stop = threading.Event()
    stats = [StreamStats() for _ in range(args.streams)]
    threads: list[threading.Thread] = []
    samples: list[dict] = []
    restart: dict[str, float] = {}
    restart_clock = float("inf")
    started = time.monotonic()
    try:
        with ModelRunnerClient(address, timeout=120, retry_s=120) as client:
            client.wait_until_ready(120)
            package = _identity_builder()(
                workdir / "identity", min_size=IDENTITY_MIN_SIZE, step=IDENTITY_STEP
            )
            model_id = client.add_model(package).id
            client.load(model_id)
        started = time.monotonic()
        for s in stats:
            thread = threading.Thread(
                target=run_stream,
                args=(address, model_id, stop, s),
                kwargs={"pace_s": args.pace_ms / 1000, "size": args.size,
                        "frames_per_stream": args.frames_per_stream},
                daemon=True,
            )  # fmt: skip
            thread.start()
            threads.append(thread)
        restart_at = started + args.duration * args.restart_at
        next_sample = started
        while (now := time.monotonic()) < started + args.duration:
            if not restart and now >= restart_at:
                old = runtimes[-1]
                assert old.process is not None
                restart["at_s"] = round(now - started, 1)
                restart_clock = now
                old.process.send_signal(signal.SIGKILL if args.kill else signal.SIGTERM)
                old.process.wait(60)
                restart["old_exited_after_s"] = round(time.monotonic() - now, 2)
                new = ServerProcess(
                    "runtime-2", runtime_command, workdir / "runtime-2.log", env=env
                )
                runtimes.append(new.start())
            if now >= next_sample:
                since = now - args.sample_s
                window = [lat for s in stats for (t, lat) in s.latencies if t >= since]
                samples.append(
                    {
                        "t_s": round(now - started, 1),
                        "runtime": len(runtimes),
                        "control": _process_sample(control.pid),
                        "runtime_process": _process_sample(runtimes[-1].pid),
                        "frames": sum(s.answered for s in stats),
                        "frames_per_s": round(len(window) / args.sample_s, 1),
                        **_percentiles(window),
                    }
                )
                logger.info("sample %s", samples[-1])
                next_sample += args.sample_s
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(60)
    finally:
        stop.set()
        for process in reversed(runtimes):
            process.stop(grace=15)
        control.stop(grace=15)
    return _report(args, samples, stats, restart, started, restart_clock)


def _growth(samples: list[dict], key: str, start_s: float, end_s: float) -> dict[str, float]:
    """RSS, threads and open files of ``key`` at the first sample after ``start_s`` and the
    last before ``end_s``."""
    inside = [s for s in samples if start_s <= s["t_s"] <= end_s and s[key]]
    if len(inside) < 2:
        return {}
    first, last = inside[0][key], inside[-1][key]
    return {
        "from_s": inside[0]["t_s"],
        "to_s": inside[-1]["t_s"],
        "rss_mib": [first["rss_mib"], last["rss_mib"]],
        "rss_growth_pct": round(100 * (last["rss_mib"] / first["rss_mib"] - 1), 2),
        "threads": [first["threads"], last["threads"]],
        "open_files": [first["open_files"], last["open_files"]],
    }


def _report(
    args: argparse.Namespace,
    samples: list[dict],
    stats: list[StreamStats],
    restart: dict,
    started: float,
    restart_clock: float,
) -> dict:
    warm = args.warmup_s
    restart_s = restart.get("at_s", args.duration)
    latencies = [lat for s in stats for _, lat in s.latencies]
    steady = [
        lat
        for s in stats
        for t, lat in s.latencies
        if started + warm <= t < restart_clock or t >= restart_clock + warm
    ]
    gaps = [
        b[0] - a[0]
        for s in stats
        for a, b in zip(s.latencies, s.latencies[1:], strict=False)
        if b[0] >= restart_clock
    ]
    return {
        "command": "python -m benchmarks.soak " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": cpu_model(),
            "cores": os.cpu_count(),
            "gpus": gpus(),
            "load_average_at_end": load_average(),
        },
        "settings": {k: v for k, v in vars(args).items() if k != "smoke"},
        "frames_answered": sum(s.answered for s in stats),
        "frames_lost_or_reordered": sum(s.wrong for s in stats),
        "stream_interruptions": sum(s.interruptions for s in stats),
        "errors": [e for s in stats for e in s.errors][:20],
        "latency": _percentiles(latencies),
        "latency_steady": _percentiles(steady),
        "longest_wait_after_restart_s": round(max(gaps), 2) if gaps else None,
        "restart": restart,
        "control_growth": _growth(samples, "control", warm, args.duration),
        "runtime_1_growth": _growth(samples, "runtime_process", warm, restart_s - 0.1),
        "runtime_2_growth": _growth(
            [s for s in samples if s["runtime"] == 2],
            "runtime_process",
            restart_s + warm,
            args.duration,
        ),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--duration", type=float, default=600.0, help="seconds")
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--pace-ms", type=float, default=20.0, help="pause before each frame")
    parser.add_argument("--size", type=int, default=256, help="frames are SIZE x SIZE float32")
    parser.add_argument("--frames-per-stream", type=int, default=500)
    parser.add_argument("--restart-at", type=float, default=0.5, help="fraction of the run")
    parser.add_argument("--heartbeat-s", type=float, default=2.0)
    parser.add_argument("--kill", action="store_true", help="SIGKILL the runtime, not SIGTERM")
    parser.add_argument("--smoke", action="store_true", help="20 s, 2 streams, 5 s warm-up")
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help="where to write every sample (default: soak.json in a new folder under "
        "benchmarks/runs/)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.duration, args.streams, args.warmup_s, args.sample_s = 20.0, 2, 5.0, 2.0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        result = soak(args, Path(tmp))
    if not args.smoke:
        output = args.output or run_folder("soak") / RESULTS
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2, default=str) + "\n")
        print(f"every sample in {output}")
    summary = {k: v for k, v in result.items() if k != "samples"}
    print(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
