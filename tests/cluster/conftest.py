"""Ray's state for the cluster tests in a home and a temporary directory of their own.

Ray keeps a token in ``~/.ray/auth_token`` (which the next ``ray start --head`` on the machine
takes up, demanding it from everyone) and the address of the last cluster in
``$RAY_TMPDIR/ray/ray_current_cluster`` (which ``ray.init("auto")`` joins). Tests that wrote
either would break the developer's next Ray cluster, and the developer's Ray variables would
change what the tests see; so for this package HOME and RAY_TMPDIR point at a fresh directory,
Ray's authentication variables are unset, and everything is removed afterwards. The Ray
processes the tests start, and the commands they run, inherit all of it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

RAY_VARIABLES = (
    "RAY_AUTH_MODE",
    "RAY_AUTH_TOKEN",
    "RAY_AUTH_TOKEN_PATH",
    "RAY_ADDRESS",
    "MODELRUNNER_RAY_AUTH_TOKEN_FILE",
)


@pytest.fixture(scope="package", autouse=True)
def ray_home() -> Iterator[Path]:
    """The home directory the cluster tests and their Ray processes run with."""
    # short: Ray's socket paths under RAY_TMPDIR must stay within 107 characters
    root = Path(tempfile.mkdtemp(prefix="mr-ray-"))
    (root / "home").mkdir()
    (root / "tmp").mkdir()
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HOME", str(root / "home"))
            patch.setenv("RAY_TMPDIR", str(root / "tmp"))
            for name in RAY_VARIABLES:
                patch.delenv(name, raising=False)
            _reread_ray_auth()
            yield root / "home"
        _reread_ray_auth()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _reread_ray_auth() -> None:
    """Ray caches its mode and token per process: read them from the variables again."""
    if importlib.util.find_spec("ray") is None:
        return  # the tests that need Ray skip
    from modelrunner.cluster.ray_token_auth import reread_ray_auth

    reread_ray_auth()
