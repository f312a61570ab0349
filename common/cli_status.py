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
        "--interval", type=float, default=2.0, help="seconds between scrapes (default 2)"
    )
    status.add_argument(
        "--metrics",
        action="append",
        default=[],
        metavar="URL",
        help="another metrics endpoint to read (repeatable), e.g. one the server does not list",
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
            view = render(args.server, info, before, after, seconds, uris)
            if args.once:
                print(view)
                return 0
            sys.stdout.write("\033[H\033[J" + view + "\n")
            sys.stdout.flush()


def metrics_uris(info: types.ServerInfo, extra: Iterable[str] = ()) -> list[str]:
    found = [info.metrics_uri, *(r.metrics_uri for r in info.runtimes), *extra]
    return list(dict.fromkeys(u for u in found if u))


def scrape(uris: Sequence[str], timeout: float = 2.0) -> Samples:
    """Every sample of every endpoint, summed by name and labels; an endpoint that does not
    answer is left out (the view says how many answered)."""
    samples: Samples = defaultdict(float)
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
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return samples


@dataclass
class _Rates:
    frames_per_s: dict[str, float] = field(default_factory=dict)
    frame_p95_s: dict[str, float] = field(default_factory=dict)
    call_p95_s: dict[tuple[str, str], float] = field(default_factory=dict)
    calls: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    """(plane, method) -> (calls, errors) in the whole run."""


def rates(before: Samples, after: Samples, seconds: float) -> _Rates:
    out = _Rates()
    for (name, labels), value in after.items():
        d = dict(labels)
        if name == "modelrunner_frames_total" and d.get("outcome") == "ok":
            gained = value - before.get((name, labels), 0.0)
            out.frames_per_s[d["model"]] = out.frames_per_s.get(d["model"], 0.0) + max(
                0.0, gained / seconds
            )
        elif name == "modelrunner_requests_total":
            key = (d["plane"], d["method"])
            calls, failed = out.calls.get(key, (0.0, 0.0))
            out.calls[key] = (calls + value, failed + (value if d["code"] != "OK" else 0.0))
    for model in {
        dict(lb).get("model", "") for n, lb in after if n.startswith("modelrunner_frame_duration")
    }:
        p95 = _quantile(0.95, "modelrunner_frame_duration_seconds", {"model": model}, before, after)
        if p95 is not None:
            out.frame_p95_s[model] = p95
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


def _quantile(
    q: float, name: str, match: dict[str, str], before: Samples, after: Samples
) -> float | None:
    """Prometheus' ``histogram_quantile`` over the buckets filled between the scrapes, or over
    the whole run when none were."""

    def buckets(samples: Samples) -> dict[float, float]:
        found: dict[float, float] = defaultdict(float)
        for (n, labels), value in samples.items():
            d = dict(labels)
            if n == f"{name}_bucket" and all(d.get(k) == v for k, v in match.items()):
                found[float(d["le"])] += value
        return found

    late, early = buckets(after), buckets(before)
    window = {le: late[le] - early.get(le, 0.0) for le in late}
    chosen = window if window.get(math.inf, 0.0) > 0 else late
    total = chosen.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for le in sorted(chosen):
        count = chosen[le]
        if count >= rank:
            if math.isinf(le):
                return lower_bound
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return lower_bound + (le - lower_bound) * share
        lower_bound, lower_count = le, count
    return None


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
                "warm_models": [m.model_id for m in rt.loaded_models],
                "flight_uri": rt.flight_uri,
            }
            for rt in info.runtimes
        ],
        "frames_per_s": r.frames_per_s,
        "frame_p95_s": r.frame_p95_s,
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
) -> str:
    r = rates(before, after, seconds)
    available = sum(1 for rt in info.runtimes if rt.available)
    cache = info.cache
    lines = [
        f"modelrunner {info.modelrunner_version} at {address}: {len(info.runtimes)} runtime(s), "
        f"{available} available"
        + (f"; cache {cache.models} model(s), {_mib(cache.used_bytes)}" if cache else ""),
        f"metrics from {len(uris)} endpoint(s); rates over the last {seconds:.1f} s",
        "",
        f"{'RUNTIME':<24} {'STATE':<11} {'QUEUE':>5} {'WARM':>4}  FLIGHT",
    ]
    for rt in info.runtimes:
        state = "available" if rt.available else "leaving"
        lines.append(
            f"{rt.runtime_id[:24]:<24} {state:<11} {rt.queue_depth:>5} "
            f"{len(rt.loaded_models):>4}  {rt.flight_uri}"
        )
    warm_on: dict[str, list[str]] = defaultdict(list)
    memory: dict[str, int] = defaultdict(int)
    for rt in info.runtimes:
        for m in rt.loaded_models:
            warm_on[m.model_id[:12]].append(rt.runtime_id)
            memory[m.model_id[:12]] += m.memory_bytes
    models = sorted(set(warm_on) | set(r.frames_per_s) | set(r.frame_p95_s))
    lines += ["", f"{'MODEL':<13} {'FRAMES/S':>9} {'P95 FRAME':>10} {'MEMORY':>10}  WARM ON"]
    for model in models:
        lines.append(
            f"{model or '(none)':<13} {r.frames_per_s.get(model, 0.0):>9.1f} "
            f"{_ms(r.frame_p95_s.get(model)):>10} {_mib(memory.get(model, 0)):>10}  "
            f"{', '.join(warm_on.get(model, [])) or '-'}"
        )
    lines += ["", f"{'PLANE':<8} {'METHOD':<22} {'CALLS':>7} {'ERRORS':>7} {'P95':>10}"]
    for (plane, method), (calls, failed) in sorted(r.calls.items()):
        lines.append(
            f"{plane:<8} {method:<22} {calls:>7.0f} {failed:>7.0f} "
            f"{_ms(r.call_p95_s.get((plane, method))):>10}"
        )
    return "\n".join(lines)
