"""Which server a command talks to, and what to tell someone when none answers there.

One place for the rule every command follows: ``--server``, else ``$MODELRUNNER_SERVER``, else
``$MODELRUNNER_ADDRESS``, else :data:`DEFAULT_ADDRESS` (where ``modelrunner serve`` listens).
"""

from __future__ import annotations

import os

DEFAULT_ADDRESS = "localhost:50051"
ENVIRONMENT_NAMES = ("MODELRUNNER_SERVER", "MODELRUNNER_ADDRESS")
COMMAND_RETRY_S = 2.0
"""A command rides through a blip of the server (the client's ``retry_s``), not the 15 s a
long-lived client waits for a restart: someone typing ``modelrunner models`` with no server
running wants the hint at once."""


def address_from_environment() -> str | None:
    """The address the environment names, or None."""
    for name in ENVIRONMENT_NAMES:
        if os.environ.get(name):
            return os.environ[name]
    return None


def start_hint(address: str) -> str:
    """What to do when nothing answers at ``address``."""
    return (
        f"no modelrunner server answers at {address}: start one with `modelrunner serve` "
        "(in another terminal, or as a service), or name a running one with --server HOST:PORT "
        "or $MODELRUNNER_SERVER"
    )
