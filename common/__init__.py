"""modelrunner: serve, validate, test and run bioimage.io models.

Packages:
    modelrunner.client          typed Python client (sync and async)
    modelrunner.entry_server    the control service (gRPC): registry, cache, metadata, validation
    modelrunner.runtime_flight  the runtime (Arrow Flight): inference and model tests
    modelrunner.v1              generated protobuf code for ``protos/modelrunner/v1``
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelrunner")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
