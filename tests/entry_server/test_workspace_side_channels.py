"""What one workspace can learn about another's activity through what the server reports: the
cache's size, and the use of a warm package two workspaces share. Each test names the side
channel it attacks; docs/security.md (2.2) lists what stays shared on purpose."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from modelrunner.client import ModelRunnerClient
from tests.conftest import Secured
from tests.tiny_models import build_onnx_identity

IMAGE = np.zeros((1, 1, 8, 8), np.float32)


def _eventually(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _cache_bytes(client: ModelRunnerClient) -> int:
    cache = client.server_info().cache
    assert cache is not None
    return cache.used_bytes


def test_the_cache_size_does_not_show_another_workspace_adding_a_model(
    secured: Secured, tmp_path: Path
) -> None:
    """Attack: Bob watches GetServerInfo's cache bytes to learn when Alice adds a model."""
    with (
        secured.client("alice") as alice,
        secured.client("bob") as bob,
        secured.client("admin") as admin,
    ):
        bob_before, admin_before = _cache_bytes(bob), _cache_bytes(admin)
        info = alice.add_model(build_onnx_identity(tmp_path / "m", name="cache-size"), upload=True)
        assert _cache_bytes(bob) == bob_before
        assert _cache_bytes(admin) >= admin_before + info.size_bytes
        assert _cache_bytes(alice) >= info.size_bytes  # its own models count for it
        alice.remove_model(info.id)


def _requests(client: ModelRunnerClient, model_id: str) -> list[int]:
    return [m.requests for m in client.describe(model_id).loaded]


def test_a_shared_packages_use_is_not_shown_to_the_workspaces_sharing_it(
    secured: Secured, tmp_path: Path
) -> None:
    """Attack: Bob adds the very package Alice uses and watches its warm pipeline's request
    count (and last use) to learn how much Alice predicts."""
    package = build_onnx_identity(tmp_path / "m", name="shared-use")
    with (
        secured.client("alice") as alice,
        secured.client("bob") as bob,
        secured.client("admin") as admin,
    ):
        info = alice.add_model(package, upload=True)
        assert bob.add_model(package, upload=True).id == info.id
        for _ in range(5):
            alice.predict(info.id, IMAGE)
        # the admin sees the use (after the runtime's next heartbeat) ...
        _eventually(lambda: any(n >= 5 for n in _requests(admin, info.id)))
        # ... the workspaces sharing the package do not
        for user in (alice, bob):
            loaded = user.describe(info.id).loaded
            assert loaded and all(m.requests == 0 and m.last_used_at is None for m in loaded)
            listed = [
                m
                for r in user.server_info().runtimes
                for m in r.loaded_models
                if m.model_id == info.id
            ]
            assert listed and all(m.requests == 0 for m in listed)
        bob.remove_model(info.id)
        # once the package is Alice's alone, its use is hers to see
        _eventually(lambda: any(n >= 5 for n in _requests(alice, info.id)))
        alice.remove_model(info.id)
