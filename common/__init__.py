"""modelrunner: serve, validate, test and run bioimage.io models.

Packages, top layer first (each imports only those below it; README "Layout"):
    modelrunner.app             the ``modelrunner`` command line
    modelrunner.cluster         runtimes as Ray actors (``serve --ray``)
    modelrunner.serving         process wiring: serve, runtime, drain
    modelrunner.entry_server    the control service (gRPC): registry, cache, metadata, validation
    modelrunner.runtime_flight  the runtime (Arrow Flight): inference and model tests
    modelrunner.client          typed Python client (sync and async)
    modelrunner.runtime_client  calls to runtimes, under the client and the control service
    modelrunner.images          image files: axes, reading, writing, OME-Zarr
    modelrunner.v1              generated protobuf code for ``protos/modelrunner/v1``

The modules of ``modelrunner`` itself (folder ``common/``) are the bottom layer: errors, types,
settings, wire format, converters, auth and TLS, metrics, safe archives.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelrunner")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.0.0"

__all__ = ["__version__"]
