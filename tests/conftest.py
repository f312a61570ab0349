"""Shared fixtures: a real ``modelrunner serve`` (control service + embedded runtime) on free
ports for the whole session, a client connected to it, and the zoo's nuclei model added."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from modelrunner.client import ModelInfo, ModelRunnerClient
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings
from tests.zoo import NUCLEI


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    settings = Settings(
        host="127.0.0.1",
        port=0,
        flight_port=0,
        cache_dir=tmp_path_factory.mktemp("cache"),
        heartbeat_interval_s=1.0,
        grace_period_s=0.5,
        bioimageio_base_url="http://127.0.0.1:9/unused",
    )
    with start_embedded(settings) as running:
        yield running


@pytest.fixture(scope="session")
def client(server: RunningServer) -> Iterator[ModelRunnerClient]:
    with ModelRunnerClient(server.address, timeout=120) as c:
        yield c


@pytest.fixture(scope="session")
def nuclei(client: ModelRunnerClient) -> ModelInfo:
    return client.add_model(NUCLEI)
