"""Who may call the runtime: Arrow Flight server middleware checking bearer tokens.

The runtime keeps no tokens of its own. It asks the control service who holds a token and
whether that caller may use a model (``CheckCaller``, with the runtime's own credential), and
keeps each verdict for ``settings.auth_cache_s``; an embedded runtime asks its control service
in process. The middleware refuses a call without a known token before any handler runs
(UNAUTHENTICATED); the handlers then check the role and the model with :meth:`CallerChecks.require`.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import pyarrow.flight as flight

from modelrunner import errors
from modelrunner.auth import AUTHORIZATION_HEADER, Identity, Role, bearer, token_from_header
from modelrunner.auth import token_hash as _hash
from modelrunner.transport_errors import from_rpc_error, to_flight_error
from modelrunner.v1 import control_pb2, control_pb2_grpc

MIDDLEWARE_KEY = "caller"
_MAX_CACHED = 4096


class CallerCheck(Protocol):
    def __call__(self, token: str, model_ref: str) -> tuple[Identity, str]:
        """The token's holder, and the full id of ``model_ref`` ("" for none) when the holder
        may use it. UnauthenticatedError, ModelNotFoundError otherwise."""
        ...


class RemoteCallerCheck:
    """Asks the control service (``CheckCaller``) and remembers verdicts, refusals included."""

    def __init__(
        self,
        channel: Callable[[], grpc.Channel | None],
        runtime_token: str,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._channel = channel
        self._metadata = ((AUTHORIZATION_HEADER, bearer(runtime_token)),)
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        # Accepted callers and refusals are kept apart, each evicting its oldest entry: a flood
        # of made-up tokens can push out only other refusals, never the callers that work.
        self._accepted: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._refused: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    def __call__(self, token: str, model_ref: str) -> tuple[Identity, str]:
        key = (_hash(token), model_ref)
        now = self._clock()
        with self._lock:
            cached = self._accepted.get(key) or self._refused.get(key)
        if cached is None or cached[0] < now:
            cached = (now + self._cache_s, self._ask(token, model_ref))
            with self._lock:
                table = self._refused if isinstance(cached[1], Exception) else self._accepted
                table[key] = cached
                table.move_to_end(key)
                while len(table) > _MAX_CACHED:
                    table.popitem(last=False)
        verdict = cached[1]
        if isinstance(verdict, errors.ModelRunnerError):
            raise verdict
        return verdict  # type: ignore[no-any-return]

    def _ask(self, token: str, model_ref: str) -> tuple[Identity, str] | errors.ModelRunnerError:
        channel = self._channel()
        if channel is None:
            raise errors.UnavailableError("the runtime is not connected to a control service")
        stub = control_pb2_grpc.ControlServiceStub(channel)
        request = control_pb2.CheckCallerRequest(token=token, model_id=model_ref)
        try:
            response = stub.CheckCaller(request, timeout=10.0, metadata=self._metadata)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if isinstance(error, errors.UnauthenticatedError | errors.NotFoundError):
                return error  # a verdict: remembered
            raise error from None  # the control service is away: ask again next time
        identity = Identity(
            token_id="",
            name=response.name,
            role=Role(response.role),
            workspace=response.workspace,
            audience=response.audience,
        )
        return identity, response.model_id


@dataclass(frozen=True)
class Caller:
    token: str
    identity: Identity


class CallerMiddleware(flight.ServerMiddleware):  # type: ignore[misc]
    def __init__(self, caller: Caller) -> None:
        super().__init__()
        self.caller = caller


class CallerAuthFactory(flight.ServerMiddlewareFactory):  # type: ignore[misc]
    """Refuses every call without a known token; the handlers read the caller back."""

    def __init__(self, check: CallerCheck) -> None:
        super().__init__()
        self.check = check

    def start_call(self, info: flight.CallInfo, headers: dict[str, list[str]]) -> CallerMiddleware:
        values = headers.get(AUTHORIZATION_HEADER) or []
        token = token_from_header(values[0]) if values else None
        try:
            if token is None:
                raise errors.UnauthenticatedError(
                    "this runtime requires a token: send the header 'authorization: Bearer "
                    "<token>' (the Python client's token=)"
                )
            identity, _ = self.check(token, "")
        except errors.ModelRunnerError as exc:
            raise to_flight_error(exc) from None
        return CallerMiddleware(Caller(token=token, identity=identity))


class CallerChecks:
    """The runtime's side of authorisation: the role a call needs, and the model it names.
    ``runtime_id`` names this runtime: a control service's token issued for another runtime
    is refused."""

    def __init__(
        self, check: CallerCheck | None, runtime_id: Callable[[], str] = lambda: ""
    ) -> None:
        self.check = check
        self._runtime_id = runtime_id

    def middleware(self) -> dict[str, flight.ServerMiddlewareFactory]:
        return {} if self.check is None else {MIDDLEWARE_KEY: CallerAuthFactory(self.check)}

    def caller(self, context: flight.ServerCallContext) -> Caller | None:
        """Who makes the call; None without authentication."""
        if self.check is None:
            return None
        middleware = context.get_middleware(MIDDLEWARE_KEY)
        if middleware is None:  # pragma: no cover - the factory refuses such calls
            raise errors.UnauthenticatedError("the call carries no token")
        caller: Caller = middleware.caller
        return caller

    def require(
        self,
        context: flight.ServerCallContext,
        role: Role | tuple[Role, ...],
        what: str,
        model_ref: str = "",
    ) -> str:
        """The full id of ``model_ref`` as the caller resolves it (its workspaces, through the
        control service's resolution; "" for no model). PermissionDeniedError when the caller's
        role is too low; ModelNotFoundError when the model is not visible to it. Without
        authentication nothing is checked and "" is returned: the runtime resolves the
        reference itself."""
        caller = self.caller(context)
        if caller is None:
            return ""
        self.require_role(caller, role, what)
        if not model_ref:
            return ""
        assert self.check is not None
        _, model_id = self.check(caller.token, model_ref)
        return model_id

    def require_role(self, caller: Caller, role: Role | tuple[Role, ...], what: str) -> None:
        caller.identity.require(role, what)
        if caller.identity.role is Role.CONTROL and caller.identity.audience != self._runtime_id():
            raise errors.PermissionDeniedError(
                f"{what}: this control service token was issued for another runtime",
                details={"role": Role.CONTROL.value},
            )

    def sees_everything(self, context: flight.ServerCallContext) -> bool:
        """Whether the caller sees every workspace (admin, or no authentication)."""
        if self.check is None:
            return True
        middleware = context.get_middleware(MIDDLEWARE_KEY)
        return middleware is not None and middleware.caller.identity.sees_all_workspaces()
