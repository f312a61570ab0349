"""Imported first by the command line (``modelrunner.app.cli``), for its side effect: gRPC's C core,
and the gRPC inside Arrow Flight, read ``GRPC_VERBOSITY`` once, when they load, and otherwise
print log lines of their own to the terminal (``add_port.cc:83] Failed to add port to server``,
absl's "All log messages before absl::InitializeLog() is called", TLS handshake failures)
before the one error of ours that says what happened and what to do.

A person who wants them sets ``GRPC_VERBOSITY=debug`` (or ``info``, ``error``) and gets them.
"""

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
