"""``modelrunner status``: what a running deployment is doing, in a terminal.

The control service says which runtimes it routes to, what each has warm and how busy each was
at its last heartbeat (``GetServerInfo``); the Prometheus endpoints of the control service and
of every runtime that publishes one (``RuntimeInfo.metrics_uri``) give the rates: two scrapes
``--interval`` apart make frames/s, and the histograms' buckets filled in between give the p95
latencies (the whole run's, when nothing happened in between). ``--once`` prints one snapshot
and exits, for scripts; otherwise the view is redrawn until Ctrl+C.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from modelrunner import types

if TYPE_CHECKING:
    from modelrunner.client import ModelRunnerClient

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]
"""Prometheus samples by (name, sorted labels), summed over the endpoints scraped."""


def add_status_command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    client_flags: Callable[[argparse.ArgumentParser], None],
    connect: Callable[[argparse.Namespace], ModelRunnerClient],
) -> None:
    """``client_flags`` and ``connect``: the other client commands' ``--server``, ``--token``
    and TLS flags, and their client."""
    status = sub.add_parser(
        "status", help="runtimes, models, frames/s and p95 latencies, live (docs/metrics.md)"
    )
    client_flags(status)
    status.add_argument("--once", action="store_true", help="print one snapshot and exit")
    status.add_argument(
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between scrapes (default 2)",
    )
    status.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="another metrics endpoint to read (repeatable), e.g. one the server does not list "
        "(default: those the server and its runtimes report)",
    )
    status.set_defaults(run=lambda args: _status(args, connect(args)))


def _status(args: argparse.Namespace, connected: ModelRunnerClient) -> int:
    with connected as client:
        while True:
            info = client.server_info()
            uris = metrics_uris(info, args.metrics)
            before = scrape(uris)
            started = time.monotonic()
            time.sleep(max(0.1, args.interval))
            info = client.server_info()
            after = scrape(uris)
            seconds = time.monotonic() - started
            if getattr(args, "json", False):
                print(json.dumps(snapshot(info, before, after, seconds)), flush=True)
                if args.once:
                    return 0
                continue
            view = render(args.server, info, before, after, seconds, uris, answered=after.answered)
            if args.once:
                print(view)
                return 0
            sys.stdout.write("\033[H\033[J" + view + "\n")
            sys.stdout.flush()


def metrics_uris(info: types.ServerInfo, extra: Iterable[str] = ()) -> list[str]:
    found = [info.metrics_uri, *(r.metrics_uri for r in info.runtimes), *extra]
    return list(dict.fromkeys(u for u in found if u))


class Scraped(dict[tuple[str, Labels], float]):
    """:data:`Samples`, and how many endpoints answered."""

    answered: int = 0


def scrape(uris: Sequence[str], timeout: float = 2.0) -> Scraped:
    """Every sample of every endpoint, summed by name and labels; an endpoint that does not
    answer is left out (the view says how many answered)."""
    samples = Scraped()
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:  # a client-only install: runtimes and queues, no rates
        return samples
    for uri in uris:
        if not uri.startswith(("http://", "https://")):
            continue  # a runtime reports its URI: never let it make us open a file
        try:
            with urllib.request.urlopen(uri, timeout=timeout) as response:
                text = response.read().decode()
        except OSError:
            continue
        samples.answered += 1
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                samples[key] = samples.get(key, 0.0) + s.value
    return samples


@dataclass(frozen=True)
class FrameTimes:
    """One model's frames over the view's window, or over the whole run when none came in the
    window (``whole_run``)."""

    frames: float
    mean_s: float
    p95_s: float | None
    whole_run: bool


@dataclass
class _Rates:
    frames_per_s: dict[str, float] = field(default_factory=dict)
    frame_times: dict[str, FrameTimes] = field(default_factory=dict)
    call_p95_s: dict[tuple[str, str], float] = field(default_factory=dict)
    calls: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(plane, method) -> (calls, errors) in the whole run."""

    @property
    def frame_p95_s(self) -> dict[str, float]:
        return {m: t.p95_s for m, t in self.frame_times.items() if t.p95_s is not None}


_FRAME = "modelrunner_frame_duration_seconds"


def rates(before: Samples, after: Samples, seconds: float) -> _Rates:
    out = _Rates()
    for (name, labels), value in after.items():
        d = dict(labels)
        if name == "modelrunner_frames_total" and d.get("outcome") == "ok" and d.get("model"):
            gained = value - before.get((name, labels), 0.0)
            out.frames_per_s[d["model"]] = out.frames_per_s.get(d["model"], 0.0) + max(
                0.0, gained / seconds
            )
        elif name == "modelrunner_requests_total":
            key = (d["plane"], d["method"])
            calls, failed = out.calls.get(key, (0.0, 0.0))
            out.calls[key] = (calls + value, failed + (value if d["code"] != "OK" else 0.0))
    # "": a series no model owns (older runtimes made one for their actions)
    for model in {dict(lb).get("model", "") for n, lb in after if n.startswith(_FRAME)} - {""}:
        times = frame_times(model, before, after)
        if times is not None:
            out.frame_times[model] = times
    timed = {
        (dict(lb)["plane"], dict(lb)["method"])
        for n, lb in after
        if n == "modelrunner_request_duration_seconds_count"
    }
    for plane, method in timed | set(out.calls):
        out.calls.setdefault((plane, method), (0.0, 0.0))
        p95 = _quantile(
            0.95,
            "modelrunner_request_duration_seconds",
            {"plane": plane, "method": method},
            before,
            after,
        )
        if p95 is not None:
            out.call_p95_s[(plane, method)] = p95
    return out


def frame_times(model: str, before: Samples, after: Samples) -> FrameTimes | None:
    """``model``'s frames between the scrapes (or in the whole run, when none came between):
    how many, their mean (exact, from the histogram's sum and count) and their p95."""
    match = {"model": model}
    count = _summed(f"{_FRAME}_count", match, after)
    total = _summed(f"{_FRAME}_sum", match, after)
    window = count - _summed(f"{_FRAME}_count", match, before)
    if window > 0:
        total -= _summed(f"{_FRAME}_sum", match, before)
        count = window
    if count <= 0:
        return None
    return FrameTimes(
        frames=count,
        mean_s=total / count,
        p95_s=_quantile(0.95, _FRAME, match, before, after),
        whole_run=window <= 0,
    )


def _summed(name: str, match: dict[str, str], samples: Samples) -> float:
    return sum(
        value
        for (n, labels), value in samples.items()
        if n == name and all(dict(labels).get(k) == v for k, v in match.items())
    )


def _quantile(
    q: float, name: str, match: dict[str, str], before: Samples, after: Samples
) -> float | None:
    """Prometheus' ``histogram_quantile`` over the buckets filled between the scrapes, or over
    the whole run when none were; never more than the time the observations took allows.

    Within its bucket the quantile is interpolated linearly, as Prometheus does; with few
    observations that can land far above every one of them (four frames, one of them 2.6 s,
    made "4500 ms": the middle of the 2.5-5 s bucket). The histogram's sum bounds it: no
    observation took longer than the sum less the least the others can have taken (their
    buckets' lower bounds)."""

    def buckets(samples: Samples) -> dict[float, float]:
        found: dict[float, float] = defaultdict(float)
        for (n, labels), value in samples.items():
            d = dict(labels)
            if n == f"{name}_bucket" and all(d.get(k) == v for k, v in match.items()):
                found[float(d["le"])] += value
        return found

    late, early = buckets(after), buckets(before)
    window = {le: late[le] - early.get(le, 0.0) for le in late}
    in_window = window.get(math.inf, 0.0) > 0
    chosen = window if in_window else late
    total = chosen.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    estimate: float | None = None
    for le in sorted(chosen):
        count = chosen[le]
        if count >= rank:
            if math.isinf(le):
                estimate = lower_bound
            else:
                share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
                estimate = lower_bound + (le - lower_bound) * share
            break
        lower_bound, lower_count = le, count
    if estimate is None or not _summed(f"{name}_sum", match, after):
        return estimate  # no sum to bound it with (a hand-built sample set)
    observed = _summed(f"{name}_sum", match, after)
    if in_window:
        observed -= _summed(f"{name}_sum", match, before)
    return min(estimate, max(lower_bound, observed - _least_time_of_the_others(chosen)))


def _least_time_of_the_others(cumulative: dict[float, float]) -> float:
    """The least time all observations but the slowest can have taken: each at its bucket's
    lower bound."""
    least, previous_le, previous_count = 0.0, 0.0, 0.0
    slowest_bucket_lower = 0.0
    for le in sorted(cumulative):
        count = cumulative[le]
        if count > previous_count:
            least += (count - previous_count) * previous_le
            slowest_bucket_lower = previous_le
        previous_le, previous_count = le, count
    return least - slowest_bucket_lower


def snapshot(
    info: types.ServerInfo, before: Samples, after: Samples, seconds: float
) -> dict[str, object]:
    """What ``--json`` prints: one object per refresh."""
    r = rates(before, after, seconds)
    return {
        "runtimes": [
            {
                "runtime_id": rt.runtime_id,
                "available": rt.available,
                "queue_depth": rt.queue_depth,
                "warm_models": list(dict.fromkeys(m.model_id for m in rt.loaded_models)),
                "flight_uri": rt.flight_uri,
            }
            for rt in {rt.runtime_id: rt for rt in info.runtimes}.values()
        ],
        "frames_per_s": r.frames_per_s,
        "frame_p95_s": r.frame_p95_s,
        "frames": {
            model: {
                "frames": t.frames,
                "mean_s": t.mean_s,
                "p95_s": t.p95_s,
                "whole_run": t.whole_run,
            }
            for model, t in r.frame_times.items()
        },
        "calls": [
            {
                "plane": plane,
                "method": method,
                "calls": calls,
                "errors": failed,
                "p95_s": r.call_p95_s.get((plane, method)),
            }
            for (plane, method), (calls, failed) in sorted(r.calls.items())
        ],
        "seconds": seconds,
    }


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f} ms"


def _mib(n: float) -> str:
    return f"{n / 1024**2:.1f} MiB"


def render(
    address: str,
    info: types.ServerInfo,
    before: Samples,
    after: Samples,
    seconds: float,
    uris: Sequence[str],
    *,
    answered: int | None = None,
) -> str:
    """The terminal view. ``answered``: how many of ``uris`` answered (None: all of them)."""
    r = rates(before, after, seconds)
    runtimes = list({rt.runtime_id: rt for rt in info.runtimes}.values())  # each runtime once
    available = sum(1 for rt in runtimes if rt.available)
    cache = info.cache
    answered = len(uris) if answered is None else answered
    lines = [
        f"modelrunner {info.modelrunner_version} at {address}: {len(runtimes)} runtime(s), "
        f"{available} available"
        + (f"; cache {cache.models} model(s), {_mib(cache.used_bytes)}" if cache else ""),
        _metrics_line(uris, answered, seconds),
        "",
        f"{'RUNTIME':<24} {'STATE':<11} {'QUEUE':>5} {'WARM':>4}  FLIGHT",
    ]
    for rt in runtimes:
        state = "available" if rt.available else "leaving"
        lines.append(
            f"{rt.runtime_id[:24]:<24} {state:<11} {rt.queue_depth:>5} "
            f"{len(rt.loaded_models):>4}  {rt.flight_uri}"
        )
    warm_on: dict[str, list[str]] = defaultdict(list)
    memory: dict[str, int] = defaultdict(int)
    for rt in runtimes:
        for m in rt.loaded_models:
            # a model warm in two weight formats on one runtime is two pipelines, one runtime
            if rt.runtime_id not in warm_on[m.model_id[:12]]:
                warm_on[m.model_id[:12]].append(rt.runtime_id)
            memory[m.model_id[:12]] += m.memory_bytes
    models = sorted(set(warm_on) | set(r.frames_per_s) | set(r.frame_times))
    lines += [
        "",
        f"{'MODEL':<13} {'FRAMES/S':>9} {'FRAMES':>7} {'MEAN':>10} {'P95':>10} {'MEMORY':>10}  "
        "WARM ON",
    ]
    earlier = False
    for model in models:
        times = r.frame_times.get(model)
        mark = "*" if times is not None and times.whole_run else " "
        earlier = earlier or mark == "*"
        lines.append(
            f"{model:<13} {r.frames_per_s.get(model, 0.0):>9.1f} "
            f"{f'{times.frames:.0f}' if times else '0':>6}{mark} "
            f"{_ms(times.mean_s if times else None):>10} {_ms(times.p95_s if times else None):>10} "
            f"{_mib(memory.get(model, 0)):>10}  {', '.join(warm_on.get(model, [])) or '-'}"
        )
    if earlier:
        lines.append(
            f"* no frames in the last {seconds:.1f} s: FRAMES, MEAN and P95 of the whole run"
        )
    lines += ["", f"{'PLANE':<8} {'METHOD':<22} {'CALLS':>7} {'ERRORS':>7} {'P95':>10}"]
    for (plane, method), (calls, failed) in sorted(r.calls.items()):
        lines.append(
            f"{plane:<8} {method:<22} {calls:>7.0f} {failed:>7.0f} "
            f"{_ms(r.call_p95_s.get((plane, method))):>10}"
        )
    return "\n".join(lines)


def _metrics_line(uris: Sequence[str], answered: int, seconds: float) -> str:
    if not uris:
        return (
            "no metrics endpoint: no frames/s or latencies. Start the server with "
            "--metrics-port 0 (any free port) or --metrics-port PORT to see them "
            "(docs/metrics.md)"
        )
    if answered == 0:
        return (
            f"none of the {len(uris)} metrics endpoint(s) answered "
            f"({', '.join(uris)}): no frames/s or latencies"
        )
    missing = f" ({len(uris) - answered} did not answer)" if answered < len(uris) else ""
    return (
        f"metrics from {answered} endpoint(s){missing}; frames/s and latencies over the "
        f"last {seconds:.1f} s"
    )
