"""The local Ray cluster a benchmark starts (``benchmarks.cluster``, ``benchmarks.volume --ray``),
started the way ``modelrunner serve --ray local`` starts its own.

Ray 2.60's ``ray.init()`` turns token authentication on for the cluster it starts and, with no
token named, writes one to ``~/.ray/auth_token``, which the next ``ray start --head`` on the
machine takes up, demanding it from everyone (docs/cluster.md, "Ray's token authentication").
So the cluster runs inside :func:`~modelrunner.cluster.ray_token_auth.local_cluster_token`: a
token of its own in a private temporary file, removed with Ray's variables restored afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def local_ray(num_cpus: int) -> Iterator[None]:
    """A local Ray cluster of ``num_cpus`` CPUs for the block, shut down afterwards."""
    import ray

    from modelrunner.cluster.ray_token_auth import local_cluster_token

    with local_cluster_token():
        ray.init(
            num_cpus=num_cpus,
            object_store_memory=100 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
        )
        try:
            yield
        finally:
            ray.shutdown()  # before the token's file goes
