"""Calls to modelrunner runtimes over Arrow Flight, below both the Python client
(:mod:`modelrunner.client`) and the control service (:mod:`modelrunner.entry_server`):

    client        RuntimeClient: connections per runtime, the caller's token, predict (one
                  exchange, or a session kept open), load, unload, test, info
    exchanges     one prediction on an exchange of its own (upload thread, progress)
    sessions      lockstep predictions on exchanges kept open, their deadlines and idle times
    actions       the runtime's Flight actions, typed
    routes        Route, and the one policy for keeping routes (RouteCache)
    cancellation  cancelling calls in progress: close(), a cancel scope, Ctrl-C
"""

from .client import RuntimeClient
from .routes import ROUTE_TTL_S, Route, RouteCache, reachable_uri

__all__ = ["ROUTE_TTL_S", "Route", "RouteCache", "RuntimeClient", "reachable_uri"]
