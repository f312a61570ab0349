"""modelrunner with the ONNX identity model, through the full client and runtime path."""

from __future__ import annotations

import itertools
import time
from functools import partial
from typing import Any

import numpy as np

from modelrunner.client import ModelRunnerClient

from ..context import BenchContext
from ..frames import FrameSize, make_frame
from ..rounds import AUTHENTICATED, IDENTITY, LOCKSTEP, MODELRUNNER, SECURED, STREAM, Case

_SERVERS = {
    MODELRUNNER: ("modelrunner", ""),
    AUTHENTICATED: ("authenticated", "auth"),
    SECURED: ("secured", "tls"),
}
"""The server (name, security) behind each system."""


def predict_lockstep(
    client: ModelRunnerClient, model_id: str, frame: np.ndarray, frames: int
) -> float:
    start = time.perf_counter()
    for _ in range(frames):
        client.predict(model_id, frame)
    return time.perf_counter() - start


def predict_stream(
    client: ModelRunnerClient,
    model_id: str,
    frame: np.ndarray,
    frames: int,
    max_in_flight: int,
    **options: Any,
) -> float:
    """Seconds for ``frames`` copies of ``frame`` through one ``predict_stream`` (``options``
    go to it), checking that every frame was answered."""
    start = time.perf_counter()
    received = 0
    with client.predict_stream(
        model_id, itertools.repeat(frame, frames), max_in_flight=max_in_flight, **options
    ) as results:
        for _ in results:
            received += 1
    seconds = time.perf_counter() - start
    if received != frames:
        raise RuntimeError(f"the stream answered {received} of {frames} frames")
    return seconds


def modelrunner_cases(
    ctx: BenchContext, sizes: list[FrameSize], *, system: str = MODELRUNNER
) -> list[Case]:
    """Lockstep and stream cases of the identity; ``system=AUTHENTICATED`` or ``SECURED``:
    against a server with ``--auth`` (and TLS on both planes), the same calls with a token."""
    name, security = _SERVERS[system]
    runner = ctx.modelrunner(name, security=security)
    client = runner.client
    model_id = runner.identity_model()
    in_flight = ctx.settings.max_in_flight
    cases = []
    for size in sizes:
        frame = make_frame(size.shape)

        def check(frame: np.ndarray = frame) -> None:
            outputs = client.predict(model_id, frame)
            (out,) = outputs.values()
            if not np.array_equal(out, frame):
                raise RuntimeError(
                    f"the identity model changed the frame: got {out.shape} {out.dtype}"
                )

        cases.append(
            Case(
                system,
                LOCKSTEP,
                IDENTITY,
                size.label,
                size.nbytes,
                call="client.predict",
                run=partial(predict_lockstep, client, model_id, frame),
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
                call=f"client.predict_stream, {in_flight} in flight",
                run=partial(predict_stream, client, model_id, frame, max_in_flight=in_flight),
                min_frames=ctx.settings.stream_min_frames,
            )
        )
    return cases
