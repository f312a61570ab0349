"""How the control service calls its runtimes' actions (model tests, removals): through the
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


def remove_model_on_runtime(
    flight_uri: str, *, model_id: str, timeout_s: float, caller: RuntimeCaller = NO_CREDENTIALS
) -> tuple[int, int]:
    """Tell the runtime the model (a full id) is removed: it unloads it even while in use, ends
    the exchanges open on it and waits for its predictions in flight. Returns how many pipelines
    it unloaded and how many predictions it waited for."""
    return caller.client.remove(flight_uri, model_id, timeout=timeout_s)
