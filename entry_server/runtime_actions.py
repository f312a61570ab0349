"""How the control service calls its runtimes' actions (model tests, unloads): through the
runtime client (:mod:`modelrunner.runtime_client`), each runtime with the credential the
control service holds for it, one connection per call (these calls are rare)."""

from __future__ import annotations

from modelrunner import types
from modelrunner.runtime_client import RuntimeClient
from modelrunner.tls import ClientTls


class RuntimeCaller:
    """How the control service calls runtimes: its own token (authentication on) and the TLS
    roots and client certificate it uses (TLS on)."""

    def __init__(self, token: str | None = None, tls: ClientTls | None = None) -> None:
        self.client = RuntimeClient(token=token, tls=tls, keep_connections=False)


NO_CREDENTIALS = RuntimeCaller()


def run_model_test_on_runtime(
    flight_uri: str,
    *,
    model_id: str,
    weight_format: str = "",
    device: str = "",
    timeout_s: float,
    caller: RuntimeCaller = NO_CREDENTIALS,
) -> types.ValidationReport:
    """Run bioimageio.core's model test on the runtime at ``flight_uri``; returns its report."""
    return caller.client.test(flight_uri, model_id, weight_format, device, timeout=timeout_s)


def unload_model_on_runtime(
    flight_uri: str, *, model_id: str, timeout_s: float, caller: RuntimeCaller = NO_CREDENTIALS
) -> int:
    """Unload every pipeline of the model on the runtime; returns how many it unloaded.

    Raises ModelInUseError when one of them is serving a request."""
    return caller.client.unload(flight_uri, model_id, timeout=timeout_s)
