"""Process wiring: the control service with an embedded runtime (``modelrunner serve``), a
runtime alone that registers with a control service (``modelrunner runtime``), and the drain on
SIGTERM or SIGINT (``graceful_shutdown``).

Above the servers (it builds them and hands each its parts), below the Ray runtimes
(:mod:`modelrunner.cluster`, which start runtimes through it) and the command line
(:mod:`modelrunner.app`)."""

from .embedded import (
    RunningServer,
    announce_ready,
    control_address_of,
    serve_forever,
    start_embedded,
    start_serving,
)
from .runtime_process import RunningRuntime, run_runtime_forever, start_runtime

__all__ = [
    "RunningRuntime",
    "RunningServer",
    "announce_ready",
    "control_address_of",
    "run_runtime_forever",
    "serve_forever",
    "start_embedded",
    "start_runtime",
    "start_serving",
]
