"""Where a model runs (:class:`Route`), and the one policy for keeping routes
(:class:`RouteCache`): the Python client and the control service's forwarding of Open Inference
requests both keep each route for :data:`ROUTE_TTL_S`, forget it at once when its runtime turns
out to be gone, and keep at most :data:`MAX_ROUTES`.
"""

from __future__ import annotations

import functools
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

ROUTE_TTL_S = 2.0
"""How long a route is used before the control service is asked again. Resolving a model costs
a few index queries, about as much as moving a small frame, so lockstep calls skip it; a model
removed or unpublished is served to a caller holding its route for at most this long (where no
runtime checks the caller itself: the control service's embedded runtime, called in process)."""
MAX_ROUTES = 1024
_WILDCARD_HOSTS = {"0.0.0.0", "::", "[::]", ""}


@dataclass(frozen=True)
class Route:
    model_id: str
    """The resolved, full model id."""
    flight_uris: tuple[str, ...]
    """Best first."""
    runtime_id: str
    """The best runtime."""


class RouteCache:
    """Routes by key (a model reference, its weight format and device, and whose view the
    route is for), each kept for ``ttl_s``. Thread-safe."""

    def __init__(
        self,
        *,
        ttl_s: float = ROUTE_TTL_S,
        max_routes: int = MAX_ROUTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_routes = max_routes
        self._clock = clock
        self._routes: OrderedDict[Hashable, tuple[float, Route]] = OrderedDict()
        self._lock = threading.Lock()

    def kept(self, key: Hashable) -> Route | None:
        """The route kept for ``key``, when it is still fresh."""
        kept = self._routes.get(key)
        if kept is not None and self._clock() - kept[0] < self.ttl_s:
            return kept[1]
        return None

    def get(self, key: Hashable, resolve: Callable[[], Route]) -> Route:
        """The route kept for ``key``, or a new one from ``resolve``."""
        now = self._clock()
        with self._lock:
            kept = self._routes.get(key)
        if kept is not None and now - kept[0] < self.ttl_s:
            return kept[1]
        route = resolve()
        with self._lock:
            self._routes[key] = (now, route)
            self._routes.move_to_end(key)
            while len(self._routes) > self.max_routes:
                self._routes.popitem(last=False)
        return route

    def forget(self, route: Route | None = None) -> None:
        """Forget ``route`` wherever it is kept (its runtime went away), or every route."""
        with self._lock:
            if route is None:
                self._routes.clear()
                return
            for key in [k for k, (_, r) in self._routes.items() if r == route]:
                del self._routes[key]


@functools.lru_cache(maxsize=256)
def reachable_uri(flight_uri: str, control_address: str) -> str:
    """A runtime listening on every interface announces a wildcard host: reach it through the
    host the caller used for the control service."""
    parts = urlsplit(flight_uri)
    if parts.hostname not in _WILDCARD_HOSTS:
        return flight_uri
    control_host = control_address.rsplit(":", 1)[0] if ":" in control_address else control_address
    return urlunsplit(parts._replace(netloc=f"{control_host}:{parts.port}"))
