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
4. **+ the Python client**: ``client.predict`` (request, route, session pool, deadlines), with
   SIGINT ignored, so that it watches for no Ctrl-C;
5. **+ Ctrl-C watching**: ``client.predict`` with the program's own SIGINT handler in place.

And in this process alone, no network (what parts of step 3 and 4 are): the runtime's data plane
(``RuntimeService.predict`` on the warm identity) and the model's forward in it, and the Python
client with its transport answered at once (the ``overhead`` system's figures).

Figures are medians over interleaved rounds, in microseconds per call: wall time, and the CPU
time the client (this process) and the server used; what a step adds is the median of its
per-round differences from the step before. Client and servers share the machine's cores, so
every microsecond of Python on either side is latency, and on a busy machine CPU time is the
steadier figure.
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
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


@dataclass(frozen=True)
class Sample:
    """One step's calls of one round, per call: wall time and the CPU time each side used."""

    wall_us: float
    client_cpu_us: float
    server_cpu_us: float


@dataclass(frozen=True)
class Step:
    name: str
    call: Callable[[], object]
    server: psutil.Process
    sigint: bool = True
    """Whether the program's own SIGINT handler is in place (False: ignored, so the client
    watches nothing)."""

    def run(self, frames: int) -> Sample:
        previous = None if self.sigint else signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            server_before = _cpu(self.server)
            cpu_before, start = time.process_time(), time.perf_counter()
            for _ in range(frames):
                self.call()
            wall = time.perf_counter() - start
            cpu = time.process_time() - cpu_before
            server = _cpu(self.server) - server_before
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        return Sample(wall / frames * 1e6, cpu / frames * 1e6, server / frames * 1e6)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


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
        echo_process, mr_process = psutil.Process(echo.pid), psutil.Process(runner.server.pid)

        def predict() -> np.ndarray:
            return client.predict(model_id, frame)["output"]

        steps = [
            Step("echo", echo_session.echo, echo_process),
            Step("+ wire (client side)", echo_wire.predict, echo_process),
            Step("+ runtime", runtime_wire.predict, mr_process),
            Step("+ Python client", predict, mr_process, sigint=False),
            Step("+ Ctrl-C watch (main thread)", predict, mr_process),
        ]
        for step in steps:  # warm, and check that each gives the frame back
            out = step.call()
            assert isinstance(out, np.ndarray)
            np.testing.assert_array_equal(out.reshape(frame.shape), frame)
        frames = {
            step.name: max(8, int(seconds / max(step.run(8).wall_us * 1e-6, 1e-6)))
            for step in steps
        }
        samples: dict[str, list[Sample]] = {step.name: [] for step in steps}
        for r in range(rounds):
            for step in steps[r % len(steps) :] + steps[: r % len(steps)]:
                samples[step.name].append(step.run(frames[step.name]))
    result = Result(samples)
    (overhead,) = measure_overhead(workdir, [size], seconds=seconds * 2)
    result.in_process = {
        "the runtime's data plane": overhead.runtime_us,
        "of which the model's forward": overhead.model_us,
        "the Python client, transport answered at once": overhead.client_us,
    }
    return result


class Result:
    """Per-round samples of each step. What a step adds is the median over rounds of its
    difference from the step before in the same round (rounds run seconds apart on a noisy
    machine; neighbours in one round share its conditions). CPU time per call is what load on
    the machine disturbs least: wall time on a busy machine is mostly waiting for a core."""

    def __init__(self, samples: dict[str, list[Sample]]) -> None:
        self.samples = samples
        self.in_process: dict[str, float] = {}

    def table(self, label: str) -> str:
        names = list(self.samples)
        lines = [
            f"### {label}",
            "",
            "| step | wall µs a call | added | client CPU µs | added | server CPU µs | added |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for i, name in enumerate(names):
            cells = [name]
            for field in ("wall_us", "client_cpu_us", "server_cpu_us"):
                values = [getattr(s, field) for s in self.samples[name]]
                cells.append(f"{statistics.median(values):.0f}")
                if i == 0 or (field == "server_cpu_us" and name == "+ runtime"):
                    cells.append("")  # another server
                    continue
                before = [getattr(s, field) for s in self.samples[names[i - 1]]]
                added = statistics.median(a - b for a, b in zip(values, before, strict=True))
                cells.append(f"{added:+.0f}")
            lines.append("| " + " | ".join(cells) + " |")
        for name, us in self.in_process.items():
            lines.append(f"| in process: {name} | {us:.0f} | | | | | |")
        ratio = statistics.median(
            e.wall_us / p.wall_us
            for e, p in zip(self.samples[names[0]], self.samples[names[-1]], strict=True)
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
