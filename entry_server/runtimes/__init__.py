"""The runtimes the control service knows: their directory (registrations, heartbeats, route
choice), placement, readiness, and the actions it runs on them."""

from modelrunner.entry_server.runtimes.directory import RegistrationReply, RuntimeDirectory

__all__ = ["RegistrationReply", "RuntimeDirectory"]
