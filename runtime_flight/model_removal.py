"""What a runtime does when the control service removes a model (``unload_model`` with
``removed``): nothing on this runtime answers for the model afterwards.

1. Its id is looked up afresh from now on (the control service refuses it): a new call naming it
   gets NOT_FOUND.
2. Exchanges open on it end at their next frame with NOT_FOUND (their ``CallRights``).
3. Every pipeline of it leaves the pool at once, also while in use: the predictions running now
   and the loads under way finish (the removal waits for them, at most :data:`WAIT_S`), then the
   pipelines are closed.
4. A load that raced the first step is taken out again; then this runtime's own copy of the
   package goes (a runtime on another host fetched one), once nothing of the above reads it, and
   a heartbeat tells the control service. (A model test running on the runtime is not waited
   for: one still reading the package's files then ends in a failed report.)
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from modelrunner import errors
from modelrunner.call_rights import OpenCalls

if TYPE_CHECKING:
    from .service import RuntimeService

logger = logging.getLogger(__name__)

WAIT_S = 30.0
"""The longest a removal waits for the predictions running on the model; those still running
after it keep their pipeline until they end (it is closed then)."""
_POLL_S = 0.01


@dataclass(frozen=True)
class Removal:
    unloaded: int
    """Pipelines of the model that were loaded."""
    calls_in_flight: int
    """Predictions that were running on them, which the removal waited for."""
    exchanges_ended: int
    """Exchanges open on the model (sessions, streams), ended at their next frame."""


def remove_model(
    service: RuntimeService, open_calls: OpenCalls, model_id: str, *, wait_s: float = WAIT_S
) -> Removal:
    pool = service.pool
    service.forget_package(model_id, delete_copy=False)  # its copy goes once unread (step 4)
    gone = errors.ModelNotFoundError(
        f"model {model_id} was removed from the server", details={"model_id": model_id}
    )
    ended = open_calls.end_model(model_id, gone)
    retired = pool.retire(model_id)
    in_flight = sum(w.users for w in retired)
    deadline = time.monotonic() + wait_s
    while (any(w.users for w in retired) or pool.loading(model_id)) and (
        time.monotonic() < deadline
    ):
        time.sleep(_POLL_S)
    still = sum(w.users for w in retired)
    retired += pool.retire(model_id)  # loaded by a request that raced step 1
    service.forget_package(model_id)
    service.changed()
    if retired or ended:
        logger.info(
            "model %s removed: %d pipeline(s) unloaded, %d exchange(s) ended%s",
            model_id[:12],
            len(retired),
            ended,
            f", waited for {in_flight} prediction(s) in flight"
            + (f" ({still} still running after {wait_s:g} s)" if still else "")
            if in_flight
            else "",
        )
    return Removal(unloaded=len(retired), calls_in_flight=in_flight, exchanges_ended=ended)
