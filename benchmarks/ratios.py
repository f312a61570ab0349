"""The headline: ratios between systems, with the project's targets (reported, never asserted).

Each ratio is the median over rounds of the per-round ratio: rounds interleave the systems, so
the two sides of a round ran seconds apart, under the same load of a noisy machine. Beside it,
the ratio of the two medians the throughput table shows (``of_medians``): what a reader
computes from the figures; the two differ when rounds vary (a busy machine), which the report
then shows.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from .rounds import (
    AUTHENTICATED,
    CORE_LOCAL,
    CORE_PREDICT,
    CORE_REMOTE,
    ECHO,
    IDENTITY,
    IN_PROCESS,
    IN_PROCESS_WARM,
    LOCKSTEP,
    MODELRUNNER,
    NODE_FLIGHT,
    NODE_V2,
    OPEN_INFERENCE,
    PROCESSING,
    RAW_FLIGHT,
    RAW_V2,
    SECURED,
    STREAM,
    TRITON,
    UNET2D,
    CaseResult,
)


@dataclass(frozen=True)
class RatioSpec:
    name: str
    workload: str
    numerator: tuple[str, str]
    """(system, mode) whose frames per second are divided ..."""
    denominator: tuple[str, str]
    """... by these (system, mode)'s frames per second."""
    target: float | None = None
    at_least: bool = True
    """The target is a minimum (else a maximum)."""
    time_ratio: bool = False
    """Report seconds per frame (denominator fps / numerator fps) instead of fps."""

    @property
    def target_text(self) -> str:
        if self.target is None:
            return "-"
        return f"{'>=' if self.at_least else '<='} {self.target:g}x"


SPECS = (
    RatioSpec(
        "modelrunner predict / echo ceiling (lockstep)",
        IDENTITY,
        (MODELRUNNER, LOCKSTEP),
        (ECHO, LOCKSTEP),
        target=0.8,
    ),
    RatioSpec(
        "modelrunner predict_stream / echo ceiling (stream)",
        IDENTITY,
        (MODELRUNNER, STREAM),
        (ECHO, STREAM),
    ),
    RatioSpec(
        "with --auth / without (lockstep predict)",
        IDENTITY,
        (AUTHENTICATED, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
    ),
    RatioSpec(
        "with --auth / without (predict_stream)",
        IDENTITY,
        (AUTHENTICATED, STREAM),
        (MODELRUNNER, STREAM),
    ),
    RatioSpec(
        "with --auth and TLS / without (lockstep predict)",
        IDENTITY,
        (SECURED, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
    ),
    RatioSpec(
        "with --auth and TLS / without (predict_stream)",
        IDENTITY,
        (SECURED, STREAM),
        (MODELRUNNER, STREAM),
    ),
    RatioSpec(
        "modelrunner predict / Triton infer (lockstep)",
        IDENTITY,
        (MODELRUNNER, LOCKSTEP),
        (TRITON, LOCKSTEP),
        target=5.0,
    ),
    RatioSpec(
        "modelrunner predict_stream / Triton stream",
        IDENTITY,
        (MODELRUNNER, STREAM),
        (TRITON, STREAM),
    ),
    RatioSpec(
        "context: echo ceiling / Triton infer (lockstep), the most a Flight server gets here",
        IDENTITY,
        (ECHO, LOCKSTEP),
        (TRITON, LOCKSTEP),
    ),
    RatioSpec(
        "context: echo ceiling / Triton (stream)",
        IDENTITY,
        (ECHO, STREAM),
        (TRITON, STREAM),
    ),
    RatioSpec(
        "V2 infer (tritonclient) / client.predict, time per frame (lockstep)",
        IDENTITY,
        (OPEN_INFERENCE, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        target=1.5,
        at_least=False,
        time_ratio=True,
    ),
    RatioSpec(
        "V2 ModelInfer (raw grpcio) / client.predict, time per frame (lockstep)",
        IDENTITY,
        (RAW_V2, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        target=1.5,
        at_least=False,
        time_ratio=True,
    ),
    RatioSpec(
        "unet2d: V2 ModelInfer (raw grpcio) / client.predict, time per frame",
        UNET2D,
        (RAW_V2, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        target=1.5,
        at_least=False,
        time_ratio=True,
    ),
    RatioSpec(
        "V2 stream infer (tritonclient) / client.predict_stream, time per frame",
        IDENTITY,
        (OPEN_INFERENCE, STREAM),
        (MODELRUNNER, STREAM),
        time_ratio=True,
    ),
    RatioSpec(
        "raw pyarrow Flight, an exchange per frame / client.predict, time per frame",
        IDENTITY,
        (RAW_FLIGHT, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "Node.js example over Flight / client.predict, time per frame",
        IDENTITY,
        (NODE_FLIGHT, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "Node.js example over V2 / client.predict, time per frame",
        IDENTITY,
        (NODE_V2, LOCKSTEP),
        (MODELRUNNER, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "heavy-processing model, time per frame: remote / in-process",
        PROCESSING,
        (MODELRUNNER, LOCKSTEP),
        (IN_PROCESS, LOCKSTEP),
        target=0.5,
        at_least=False,
        time_ratio=True,
    ),
    RatioSpec(
        "bioimageio.core.predict, modelrunner pipeline with remote processing / in-process, "
        "time per frame",
        CORE_PREDICT,
        (CORE_REMOTE, LOCKSTEP),
        (IN_PROCESS, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "bioimageio.core.predict, modelrunner pipeline with remote processing / in-process "
        "loaded once, time per frame",
        CORE_PREDICT,
        (CORE_REMOTE, LOCKSTEP),
        (IN_PROCESS_WARM, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "bioimageio.core.predict, modelrunner pipeline with local processing / in-process, "
        "time per frame",
        CORE_PREDICT,
        (CORE_LOCAL, LOCKSTEP),
        (IN_PROCESS, LOCKSTEP),
        time_ratio=True,
    ),
    RatioSpec(
        "unet2d time per frame: remote / in-process",
        UNET2D,
        (MODELRUNNER, LOCKSTEP),
        (IN_PROCESS, LOCKSTEP),
        target=1.1,
        at_least=False,
        time_ratio=True,
    ),
)


@dataclass(frozen=True)
class Ratio:
    spec: RatioSpec
    size: str
    value: float | None
    rounds: int
    missing: str | None = None
    of_medians: float | None = None
    """The same ratio of the two sides' median frames/s (the throughput table's figures)."""

    @property
    def verdict(self) -> str:
        if self.value is None:
            return "missing"
        if self.spec.target is None:
            return "-"
        ok = (
            self.value >= self.spec.target if self.spec.at_least else self.value <= self.spec.target
        )
        return "pass" if ok else "FAIL"

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.spec.name,
            "workload": self.spec.workload,
            "size": self.size,
            "value": self.value,
            "of_medians": self.of_medians,
            "rounds": self.rounds,
            "target": self.spec.target_text,
            "verdict": self.verdict,
            "missing": self.missing,
        }


def compute_ratios(results: Sequence[CaseResult]) -> list[Ratio]:
    by_key = {(r.system, r.mode, r.workload, r.size): r for r in results}
    sizes: dict[str, list[str]] = {}
    for r in results:
        sizes.setdefault(r.workload, [])
        if r.size not in sizes[r.workload] and r.size != "-":
            sizes[r.workload].append(r.size)
    ratios = []
    for spec in SPECS:
        for size in sizes.get(spec.workload, []):
            num = by_key.get((*spec.numerator, spec.workload, size))
            den = by_key.get((*spec.denominator, spec.workload, size))
            if num is None or den is None:
                continue  # a side this run did not measure (--systems): nothing to report
            ratios.append(_ratio(spec, size, num, den))
    return ratios


def _ratio(spec: RatioSpec, size: str, num: CaseResult | None, den: CaseResult | None) -> Ratio:
    for side, result in (("numerator", num), ("denominator", den)):
        if result is None:
            return Ratio(spec, size, None, 0, f"{side} not measured")
        if not result.round_fps:
            return Ratio(spec, size, None, 0, f"{result.system} {result.mode}: {result.error}")
    assert num is not None and den is not None
    pairs = list(zip(num.round_fps, den.round_fps, strict=False))
    per_round = [(d / n) if spec.time_ratio else (n / d) for n, d in pairs]
    n, d = statistics.median(num.round_fps), statistics.median(den.round_fps)
    return Ratio(
        spec,
        size,
        statistics.median(per_round),
        len(per_round),
        of_medians=(d / n) if spec.time_ratio else (n / d),
    )
