"""Which runtime a model's next client goes to: placement by model affinity.

Runtimes that have the model warm come first, the least busy of them first (queue depth: the
predictions, streams and sessions in progress that each runtime reported in its last heartbeat).
When every runtime that has it warm is saturated (``spread_queue_depth`` or more in progress)
and another runtime is not, that one comes first: it loads the model on the client's first call
and the traffic spreads over one copy more. Copies nobody uses any more are unloaded by their
runtime after ``idle_unload_s`` (``runtime_flight/idle_unloading.py``). With one runtime, or
none saturated, this is the order routing always had: warm first, then the least loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from modelrunner import types


def placement_order(
    runtimes: Sequence[types.RuntimeInfo],
    has_model_warm: Callable[[types.RuntimeInfo], bool],
    *,
    spread_queue_depth: int,
) -> list[types.RuntimeInfo]:
    """``runtimes`` (all able to run the model) best first."""
    warm = sorted(
        (r for r in runtimes if has_model_warm(r)), key=lambda r: (r.queue_depth, r.runtime_id)
    )
    cold = sorted(
        (r for r in runtimes if not has_model_warm(r)),
        key=lambda r: (
            r.queue_depth >= spread_queue_depth,
            len(r.loaded_models),
            r.queue_depth,
            r.runtime_id,
        ),
    )
    saturated = bool(warm) and all(r.queue_depth >= spread_queue_depth for r in warm)
    if saturated and cold and cold[0].queue_depth < spread_queue_depth:
        return cold[:1] + warm + cold[1:]
    return warm + cold
