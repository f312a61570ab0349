"""The error for a request over a resource limit: :func:`modelrunner.limits.over_limit`, in the
bottom layer so that the runtime reports its limits the same way."""

from modelrunner.limits import over_limit

__all__ = ["over_limit"]
