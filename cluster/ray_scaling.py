"""How many runtime actors to run, from the load the runtimes report (docs/cluster.md).

One more runtime when every available one has stayed saturated (``spread_queue_depth`` or more
in progress) for ``sustain`` checks in a row, up to ``max_runtimes``: a new actor asks Ray for a
GPU (or a CPU), and when the cluster has none free, Ray's autoscaler starts a node for it. A
runtime that was added this way goes again once it has been idle (nothing in progress, no
model warm: its copies were unloaded after ``idle_unload_s``) for ``idle_s``; the runtimes
started with the service always stay. The decisions are pure functions of what the control
service knows, tested without Ray.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from modelrunner import types


@dataclass
class LoadScaling:
    """The scaling policy and what it remembers between checks."""

    min_runtimes: int
    max_runtimes: int
    spread_queue_depth: int
    idle_s: float
    sustain: int = 3
    clock: Callable[[], float] = time.monotonic
    _saturated_checks: int = 0
    _idle_since: dict[str, float] = field(default_factory=dict)

    def wants_more(self, runtimes: Sequence[types.RuntimeInfo], running: int) -> bool:
        """True when a runtime should be added now (resets the count when it says so)."""
        available = [r for r in runtimes if r.available]
        saturated = bool(available) and all(
            r.queue_depth >= self.spread_queue_depth for r in available
        )
        self._saturated_checks = self._saturated_checks + 1 if saturated else 0
        if running < self.max_runtimes and self._saturated_checks >= self.sustain:
            self._saturated_checks = 0
            return True
        return False

    def idle_to_remove(
        self, runtimes: Sequence[types.RuntimeInfo], added: Sequence[str]
    ) -> list[str]:
        """Added runtimes idle for ``idle_s`` (never more than leaves ``min_runtimes``)."""
        now = self.clock()
        by_id = {r.runtime_id: r for r in runtimes}
        idle = []
        for runtime_id in added:
            info = by_id.get(runtime_id)
            if info is None or info.queue_depth > 0 or info.loaded_models:
                self._idle_since.pop(runtime_id, None)
                continue
            since = self._idle_since.setdefault(runtime_id, now)
            if now - since >= self.idle_s:
                idle.append(runtime_id)
        removable = max(0, len(runtimes) - self.min_runtimes)
        chosen = idle[:removable]
        for runtime_id in chosen:
            self._idle_since.pop(runtime_id, None)
        return chosen
