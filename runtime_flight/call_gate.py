"""What a call may do on the runtime, decided when it opens and kept for as long as it runs.

The Flight edge asks this one object, and nothing else, about rights and limits:

* :meth:`CallGate.model_for`: the full id of the model a call names, resolved *as its caller*
  (with authentication: the caller's workspaces, through the control service's own resolution,
  so neither a prefix nor an alias reaches another workspace's model and no error names one;
  without: the runtime's resolution, the one caller being everyone's admin).
* :meth:`CallGate.exchange`: an exchange's :class:`~modelrunner.call_rights.CallRights`, which
  the exchange checks before each sample or frame (``rights.check()``): the caller's token and
  the model's visibility are asked again at most every ``auth_cache_s``; a removed model ends
  the exchange at once (:attr:`CallGate.open_calls`). It also holds one of the caller's
  ``max_exchanges_per_token`` slots while it is at work (from when it opens; a session gives
  its slot back while it waits idle for its next sample, and a token keeps at most as many idle
  sessions besides: see :class:`~modelrunner.call_slots.WorkingAndIdleLimit`).
* :attr:`CallGate.tests`: model tests at once (``max_concurrent_tests``), as on the control
  service.
* :attr:`CallGate.receiving`: the bytes of samples all exchanges receive at once
  (``max_receiving_bytes``, :mod:`.receiving_budget`), every caller together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.auth import Role, token_hash
from modelrunner.call_rights import CallRights, OpenCalls, Recheck
from modelrunner.call_slots import CallLimit, HeldSlot, WorkingAndIdleLimit
from modelrunner.settings import Settings

from .caller_auth import Caller, CallerChecks
from .receiving_budget import ReceivingBudget

PREDICTION = "prediction"


class CallGate:
    def __init__(
        self, checks: CallerChecks, resolve: Callable[[str], str], settings: Settings
    ) -> None:
        """``resolve``: the runtime's own resolution of a model reference (authentication
        off)."""
        self.checks = checks
        self._resolve = resolve
        self._recheck_s = settings.auth_cache_s
        self.open_calls = OpenCalls()
        """The exchanges open now, by model (a removed model's are ended)."""
        self.tests = CallLimit("max_concurrent_tests", settings.max_concurrent_tests, "model tests")
        self.receiving = ReceivingBudget(settings.max_receiving_bytes)
        self._exchanges_per_token = WorkingAndIdleLimit(
            "max_exchanges_per_token", settings.max_exchanges_per_token, "open exchanges"
        )

    def model_for(
        self,
        context: flight.ServerCallContext,
        role: Role | tuple[Role, ...],
        what: str,
        model_ref: str,
    ) -> str:
        """The full id of ``model_ref`` as the caller may use it; PermissionDeniedError for a
        role too low, ModelNotFoundError for a model the caller may not see."""
        return self.checks.require(context, role, what, model_ref) or self._resolve(model_ref)

    @contextmanager
    def exchange(self, context: flight.ServerCallContext, model_ref: str) -> Iterator[CallRights]:
        """The rights of a prediction exchange naming ``model_ref``, for as long as it is
        open."""
        caller = self.checks.caller(context)
        slot: AbstractContextManager[HeldSlot | None] = (
            self._exchanges_per_token.slot(f"token {token_hash(caller.token)[:12]}")
            if caller is not None
            else nullcontext()
        )
        with slot as held:
            model_id = self.model_for(context, Role.READ, PREDICTION, model_ref)
            recheck = None if caller is None else self._recheck(caller, model_id)
            rights = CallRights(model_id, recheck, every_s=self._recheck_s, slot=held)
            with self.open_calls.holding(rights):
                yield rights

    def _recheck(self, caller: Caller, model_id: str) -> Recheck:
        check = self.checks.check
        assert check is not None

        def recheck() -> None:
            identity, still = check(caller.token, model_id)
            self.checks.require_role(Caller(caller.token, identity), Role.READ, PREDICTION)
            if still != model_id:  # the id now names something else for this caller
                raise errors.ModelNotFoundError(
                    f"model {model_id} is no longer available to this caller",
                    details={"model_id": model_id},
                )

        return recheck
