"""What GetServerInfo reports: versions, platform, cache and runtimes.

Versions come from ``importlib.metadata``: nothing is imported, so asking is cheap and the
control service never loads an ML framework.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version

from modelrunner import __version__, types

REPORTED_PACKAGES = (
    "bioimageio.core",
    "bioimageio.spec",
    "grpcio",
    "protobuf",
    "pyarrow",
    "numpy",
    "pydantic",
    "torch",
    "onnxruntime",
    "tensorflow",
    "tensorflow-cpu",
    "careamics",
    "cellpose",
)


def package_versions(names: Sequence[str] = REPORTED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names``; packages that are not installed are left out."""
    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def server_info(
    cache: types.CacheInfo | None, runtimes: Sequence[types.RuntimeInfo]
) -> types.ServerInfo:
    return types.ServerInfo(
        modelrunner_version=__version__,
        package_versions=package_versions(),
        python_version=platform.python_version(),
        platform=platform.platform(),
        cache=cache,
        runtimes=tuple(runtimes),
    )
