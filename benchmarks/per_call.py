"""Where a lockstep ``client.predict`` spends its time beyond the persistent-exchange echo, step
by step: ``python -m benchmarks.per_call [--sizes 512] [--rounds 7]`` (about a minute).

Each step adds one piece to the one before, against real servers in other processes (the echo
server and ``modelrunner serve`` with the ONNX identity, as in the main benchmark), so the
differences between rows are what each piece costs per call:

1. **echo**: a bare pyarrow exchange kept open, the frame written and its echo read;
2. **+ modelrunner's wire, client side**: the same echo, the frame encoded and written as the
   client does (``SampleLayout``, aligned bodies) and decoded as it does (``SampleDecoder``);
3. **+ the runtime**: that bare session client against ``modelrunner serve`` (a session
   exchange): the runtime's handler, its data plane and the model;
4. **+ the Python client**: ``client.predict`` from a worker thread (request, route, session
   pool, deadlines);
5. **+ Ctrl-C watching**: ``client.predict`` from the main thread (the SIGINT watch).

And in this process alone, no network (what parts of step 3 and 4 are): the runtime's data plane
(``RuntimeService.predict`` on the warm identity) and the model's forward in it, and the Python
client with its transport answered at once (the ``overhead`` system's figures).

Figures are medians over interleaved rounds, in microseconds per call; what a step adds is the
median of its per-round differences from the step before. Client and servers share the
machine's cores, so every microsecond of Python on either side is latency.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import pyarrow.flight as flight

from modelrunner.body_alignment import write_aligned
from modelrunner.v1 import runtime_pb2
from modelrunner.wire import SampleDecoder, SampleLayout, encode_sample

from .frames import FrameSize, make_frame, parse_sizes
from .modelrunner_server import REPO_ROOT, start_modelrunner
from .processes import ServerProcess, free_port
from .systems.echo import READ_OPTIONS, EchoSession, frame_batch
from .systems.overhead import measure_overhead

DIMS = {"input": ("batch", "channel", "y", "x")}


class WireSession:
    """A bare session client writing and reading modelrunner's wire format: to the echo
    server (whose echo decodes as outputs) or to a runtime (a session exchange)."""

    def __init__(self, client: flight.FlightClient, command: bytes, frame: np.ndarray) -> None:
        self.arrays = {"input": frame}
        self.layout = SampleLayout.plan(self.arrays, DIMS)
        self.writer, self.reader = client.do_exchange(
            flight.FlightDescriptor.for_command(command),
            flight.FlightCallOptions(timeout=600, read_options=READ_OPTIONS),
        )
        self.writer.begin(self.layout.schema())
        self.decoder: SampleDecoder | None = None

    def predict(self) -> np.ndarray:
        for batch in encode_sample(self.layout, self.arrays):
            write_aligned(self.writer, batch)
        while True:
            chunk = self.reader.read_chunk()
            if chunk.data is None:
                continue
            if self.decoder is None:
                self.decoder = SampleDecoder(SampleLayout.from_schema(self.reader.schema))
            samples = self.decoder.feed(chunk.data)
            if samples:
                return next(iter(samples[0].values()))

    def close(self) -> None:
        self.writer.done_writing()
        self.writer.close()


def in_thread(call: Callable[[], object]) -> Callable[[], object]:
    """``call`` run by one worker thread that stays (no thread started per call)."""
    go, done = threading.Semaphore(0), threading.Semaphore(0)

    def work() -> None:
        while True:
            go.acquire()
            call()
            done.release()

    threading.Thread(target=work, daemon=True).start()

    def run() -> None:
        go.release()
        done.acquire()

    return run


def per_call_us(call: Callable[[], object], frames: int) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        call()
    return (time.perf_counter() - start) / frames * 1e6


def measure(size: FrameSize, rounds: int, seconds: float, workdir: Path) -> Result:
    with ExitStack() as stack:
        port = free_port()
        echo = stack.enter_context(
            ServerProcess(
                "echo-server",
                [sys.executable, "-m", "benchmarks.echo_server", "--port", str(port)],
                workdir / "echo-server.log",
                cwd=REPO_ROOT,
            )
        )
        echo_client = stack.enter_context(flight.connect(f"grpc://127.0.0.1:{port}"))
        echo.wait_ready(lambda: echo_client.wait_for_available(timeout=1) is None, timeout=30)
        runner = start_modelrunner(stack, workdir, workdir)
        model_id = runner.identity_model()
        frame = make_frame(size.shape)
        (serving,) = runner.client.server_info().runtimes
        runtime = stack.enter_context(flight.connect(serving.flight_uri))
        command = runtime_pb2.PredictCommand(model_id=model_id, session=True)
        echo_session = EchoSession(echo_client, frame_batch(frame))
        echo_wire = WireSession(echo_client, b"echo", frame)
        runtime_wire = WireSession(runtime, command.SerializeToString(), frame)
        for s in (echo_session, echo_wire, runtime_wire):
            stack.callback(s.close)
        client = runner.client
        steps: dict[str, Callable[[], object]] = {
            "echo": echo_session.echo,
            "+ wire (client side)": echo_wire.predict,
            "+ runtime": runtime_wire.predict,
            "+ Python client (worker thread)": in_thread(lambda: client.predict(model_id, frame)),
            "+ Ctrl-C watch (main thread)": lambda: client.predict(model_id, frame),
        }
        for call in steps.values():  # warm, and check that each gives the frame back
            out = call()
            if isinstance(out, np.ndarray):
                np.testing.assert_array_equal(out.reshape(frame.shape), frame)
        frames = {
            name: max(8, int(seconds / max(per_call_us(call, 8) * 1e-6, 1e-6)))
            for name, call in steps.items()
        }
        timings: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(rounds):
            names = list(steps)
            names = names[r % len(names) :] + names[: r % len(names)]
            for name in names:
                timings[name].append(per_call_us(steps[name], frames[name]))
    result = Result(timings)
    (overhead,) = measure_overhead(workdir, [size], seconds=seconds * 2)
    result.in_process = {
        "the runtime's data plane": overhead.runtime_us,
        "of which the model's forward": overhead.model_us,
        "the Python client, transport answered at once": overhead.client_us,
    }
    return result


class Result:
    """Per-round timings of each step: a step's cost is the median over rounds of its
    difference from the step before in the same round (rounds run seconds apart on a noisy
    machine; neighbours in one round share its conditions)."""

    def __init__(self, timings: dict[str, list[float]]) -> None:
        self.timings = timings
        self.in_process: dict[str, float] = {}

    def table(self, label: str) -> str:
        names = list(self.timings)
        lines = [f"### {label}", "", "| step | µs a call | added |", "|---|---:|---:|"]
        for i, name in enumerate(names):
            us = statistics.median(self.timings[name])
            if i == 0:
                lines.append(f"| {name} | {us:.0f} | |")
                continue
            before = self.timings[names[i - 1]]
            added = statistics.median(
                a - b for a, b in zip(self.timings[name], before, strict=True)
            )
            lines.append(f"| {name} | {us:.0f} | {added:+.0f} |")
        for name, us in self.in_process.items():
            lines.append(f"| in process: {name} | {us:.0f} | |")
        ratio = statistics.median(
            e / p for e, p in zip(self.timings[names[0]], self.timings[names[-1]], strict=True)
        )
        lines += [
            "",
            f"lockstep predict / echo (frames per second, median of rounds): {ratio:.2f}x",
        ]
        return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512", help="frame sides (default 512)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--seconds", type=float, default=0.4, help="per step and round")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="modelrunner-per-call-") as tmp:
        for size in parse_sizes(args.sizes):
            result = measure(size, args.rounds, args.seconds, Path(tmp))
            print(result.table(size.label), flush=True)


if __name__ == "__main__":
    main()
