"""What a volume's prediction needs of the client that runs it (:class:`VolumeCalls`): the client
builds it and hands it down, so the volume modules never import the client."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from modelrunner.runtime_client import Route, RuntimeClient
from modelrunner.types import ModelInfo


@dataclass(frozen=True)
class VolumeCalls:
    describe: Callable[[str], ModelInfo]
    """The model's description (the client's ``describe``)."""
    route: Callable[[str, str, str, float | None], Route]
    """(model id, weight format, device, timeout) -> where it runs, retried as the client's
    calls are."""
    runtimes: RuntimeClient
    """The client's calls to runtimes (connections, sessions, cancellation)."""
    address: str
    """The control service's address as the client reaches it (for runtimes that announce a
    wildcard host)."""
    batch_bytes: int
    """Record batch size on the wire."""
