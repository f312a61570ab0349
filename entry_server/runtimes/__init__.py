"""The runtimes the control service knows: their directory (registrations, heartbeats, route
choice), placement, readiness, and the actions it runs on them."""

from modelrunner.entry_server.runtimes.directory import Registration, RuntimeDirectory

__all__ = ["Registration", "RuntimeDirectory"]
