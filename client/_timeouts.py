"""Per-call timeouts: ``USE_CLIENT_DEFAULT`` (the client's timeout) is distinct from ``None``
(no timeout)."""

from __future__ import annotations

import enum


class UseClientDefault(enum.Enum):
    """Sentinel type: use the timeout the client was created with."""

    TOKEN = "USE_CLIENT_DEFAULT"

    def __repr__(self) -> str:
        return "USE_CLIENT_DEFAULT"


USE_CLIENT_DEFAULT = UseClientDefault.TOKEN
Timeout = float | None | UseClientDefault


def resolve_timeout(timeout: Timeout, default: float | None) -> float | None:
    return default if isinstance(timeout, UseClientDefault) else timeout
