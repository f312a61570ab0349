"""Results as a markdown table, JSON and a PNG plot."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .ratios import Ratio
from .rounds import (
    AUTHENTICATED,
    ECHO,
    IDENTITY,
    IN_PROCESS,
    LOCKSTEP,
    MODELRUNNER,
    SECURED,
    TRITON,
    CaseResult,
)
from .systems.memory import LongStream, TiledMemory
from .systems.overhead import Overhead

logger = logging.getLogger(__name__)
MiB = 1024**2
SYSTEM_COLORS = {
    ECHO: "tab:blue",
    MODELRUNNER: "tab:green",
    AUTHENTICATED: "tab:cyan",
    SECURED: "tab:olive",
    TRITON: "tab:red",
    IN_PROCESS: "tab:purple",
}


@dataclass
class Report:
    command: str
    settings: dict[str, object]
    machine: dict[str, str]
    results: list[CaseResult]
    ratios: list[Ratio]
    tiled: TiledMemory | None = None
    stream: LongStream | None = None
    overhead: list[Overhead] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        return {
            "command": self.command,
            "seconds": self.seconds,
            "settings": self.settings,
            "machine": self.machine,
            "ratios": [r.to_json() for r in self.ratios],
            "results": [r.to_json() for r in self.results],
            "tiled_memory": self.tiled.to_json() if self.tiled else None,
            "long_stream": self.stream.to_json() if self.stream else None,
            "overhead": [o.to_json() for o in self.overhead],
            "notes": self.notes,
            "errors": self.errors,
        }


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}g}"


def ratio_table(ratios: Sequence[Ratio]) -> str:
    lines = [
        "| ratio | size | median of per-round ratios | ratio of the medians | target | result |",
        "|---|---|---:|---:|---|---|",
    ]
    for r in ratios:
        value = "-" if r.value is None else f"{r.value:.2f}x"
        medians = "-" if r.of_medians is None else f"{r.of_medians:.2f}x"
        verdict = r.verdict if r.missing is None else f"missing ({r.missing})"
        lines.append(
            f"| {r.spec.name} | {r.size} | {value} | {medians} | {r.spec.target_text} | {verdict} |"
        )
    return "\n".join(lines)


def throughput_table(results: Sequence[CaseResult]) -> str:
    lines = [
        "| workload | size | system | mode | call | frames/round | frames/s | GB/s | ms/frame "
        "| fps min-max |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|",
    ]
    for r in results:
        fps = r.round_fps
        spread = f"{_num(min(fps))}-{_num(max(fps))}" if fps else "-"
        if r.error is not None:
            spread = f"error: {r.error}"
        lines.append(
            f"| {r.workload} | {r.size} | {r.system} | {r.mode} | {r.call} | "
            f"{r.frames_per_round or '-'} | {_num(r.fps)} | {_num(r.gb_per_s)} | "
            f"{_num(r.ms_per_frame)} | {spread} |"
        )
    return "\n".join(lines)


def memory_section(tiled: TiledMemory | None, stream: LongStream | None) -> str:
    parts = []
    if tiled is not None:
        parts += [
            "| tiled predict | input | tiles (blocksize) | baseline RSS | peak RSS increase "
            "| increase / input | seconds |",
            "|---|---|---|---:|---:|---:|---:|",
            f"| identity, 2-D float32 {tiled.image_shape[0]}x{tiled.image_shape[1]} "
            f"| {tiled.input_bytes / MiB:.0f} MiB | {tiled.tile}x{tiled.tile} ({tiled.blocksize}) "
            f"| {tiled.baseline_rss / MiB:.0f} MiB | {tiled.increase / MiB:.0f} MiB "
            f"| {tiled.increase_per_input:.2f} | {tiled.seconds:.1f} |",
            "",
        ]
    if stream is not None:
        side = "x".join(str(s) for s in stream.frame_shape[-2:])
        parts += [
            "| long stream | frames | seconds | frames/s | GB/s | server peak RSS increase "
            "| server RSS end - start | client RSS end - start | outputs in order, unchanged |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| identity {side} float32, predict_stream, {stream.max_in_flight} in flight "
            f"| {stream.frames:,} | {stream.seconds:.1f} | {_num(stream.fps)} "
            f"| {_num(stream.gb_per_s)} | {(stream.peak_rss - stream.baseline_rss) / MiB:.0f} MiB "
            f"| {(stream.end_rss - stream.baseline_rss) / MiB:+.0f} MiB "
            f"| {(stream.client_end_rss - stream.client_start_rss) / MiB:+.0f} MiB "
            f"| {'yes' if stream.unchanged else 'NO'} |",
            "",
        ]
    return "\n".join(parts) if parts else "(not measured)\n"


def overhead_section(overhead: Sequence[Overhead], results: Sequence[CaseResult]) -> str:
    if not overhead:
        return "(not measured)\n"
    lockstep = {
        (r.system, r.size): r.ms_per_frame
        for r in results
        if r.mode == LOCKSTEP and r.workload == IDENTITY and r.ms_per_frame is not None
    }
    lines = [
        "| size | client.predict Python | runtime predict | of which the model | "
        "of which the NaN check | one copy of the frame | echo round trip | "
        "modelrunner round trip |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in overhead:
        echo = lockstep.get((ECHO, o.size))
        ours = lockstep.get((MODELRUNNER, o.size))
        lines.append(
            f"| {o.size} | {o.client_us:,.0f} µs | {o.runtime_us:,.0f} µs | {o.model_us:,.0f} µs "
            f"| {o.nan_check_us:,.0f} µs | {o.copy_us:,.0f} µs "
            f"| {'-' if echo is None else f'{echo * 1000:,.0f} µs'} "
            f"| {'-' if ours is None else f'{ours * 1000:,.0f} µs'} |"
        )
    return "\n".join(lines) + "\n"


def markdown(report: Report) -> str:
    rounds = report.settings.get("rounds")
    machine = "\n".join(f"| {k} | {v} |" for k, v in report.machine.items())
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    notes = "\n".join(f"- {n}" for n in [*report.notes, *report.errors]) or "- none"
    return f"""# modelrunner benchmark results

Command: `{report.command}` ({report.seconds:.0f} s in all). Every figure is a median over
{rounds} rounds; rounds interleave the systems (in a rotating order) and ratios are medians of
per-round ratios (the verdict's), shown beside the ratio of the two medians in the throughput
table. Frames are float32 `(1, 1, side, side)` arrays; GB/s counts each frame's bytes
once (1 GB = 1e9 bytes), although every frame also travels back. Targets are reported, not
asserted: this machine is shared and noisy, so read ratios, not absolute figures.

## Headline ratios

{ratio_table(report.ratios)}

## Throughput

{throughput_table(report.results)}

![throughput](throughput.png)

## Server memory (modelrunner)

{memory_section(report.tiled, report.stream)}
## Where the time goes (modelrunner's own work per call, no network)

Measured in the benchmark's process: the client with its Flight calls answered at once, the
runtime's `RuntimeService.predict` on the warm identity, and parts of it (see
`systems/overhead.py`). The round trips are the lockstep figures above.

{overhead_section(report.overhead, report.results)}
## Notes

{notes}

## Machine

| | |
|---|---|
{machine}

Settings: {settings}
"""


def plot(results: Sequence[CaseResult], path: Path) -> Path | None:
    """Frames/s and GB/s per system, mode and frame size (identity workload), and the unet2d
    times per frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    identity = [r for r in results if r.workload == IDENTITY and r.fps]
    other = [r for r in results if r.workload != IDENTITY and r.fps]
    if not identity and not other:
        logger.warning("nothing to plot")
        return None
    panels = (2 if identity else 0) + (1 if other else 0)
    fig, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.8), squeeze=False)
    ax_iter = iter(axes[0])
    if identity:
        sizes = list(dict.fromkeys(r.size for r in identity))
        series = list(dict.fromkeys((r.system, r.mode) for r in identity))
        by_key = {(r.system, r.mode, r.size): r for r in identity}
        width = 0.8 / len(series)
        for ax, metric, label in (
            (next(ax_iter), "fps", "frames/s (log scale)"),
            (next(ax_iter), "gb_per_s", "GB/s (input bytes)"),
        ):
            for j, (system, mode) in enumerate(series):
                xs, ys = [], []
                for i, size in enumerate(sizes):
                    r = by_key.get((system, mode, size))
                    if r is not None:
                        xs.append(i + (j - (len(series) - 1) / 2) * width)
                        ys.append(getattr(r, metric))
                ax.bar(
                    xs,
                    ys,
                    width,
                    label=f"{system} {mode}",
                    color=SYSTEM_COLORS.get(system, "tab:gray"),
                    alpha=1.0 if mode == LOCKSTEP else 0.55,
                    hatch="" if mode == LOCKSTEP else "//",
                    edgecolor="black",
                    linewidth=0.5,
                )
            ax.set_xticks(range(len(sizes)), [f"{s} float32" for s in sizes])
            ax.set_ylabel(label)
            ax.set_title(f"identity: {label.split(' (')[0]}")
            if metric == "fps":
                ax.set_yscale("log")
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].legend(fontsize=8)
    if other:
        ax = next(ax_iter)
        labels = [f"{r.system}\n{r.workload} {r.size}" for r in other]
        ax.bar(
            range(len(other)),
            [r.ms_per_frame or 0 for r in other],
            color=[SYSTEM_COLORS.get(r.system, "tab:gray") for r in other],
        )
        ax.set_xticks(range(len(other)), labels, fontsize=8)
        ax.set_ylabel("ms per frame (lower is better)")
        ax.set_title("real model: remote vs in-process")
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(report: Report, out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    md = out_dir / "results.md"
    md.write_text(markdown(report))
    written.append(md)
    js = out_dir / "results.json"
    js.write_text(json.dumps(report.to_json(), indent=2, default=str) + "\n")
    written.append(js)
    png = plot(report.results, out_dir / "throughput.png")
    if png is not None:
        written.append(png)
    return written
