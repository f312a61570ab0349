"""TLS on both planes and the rule on where a server may listen, with certificates made in the
session (``tests/certificates.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelrunner import errors
from modelrunner.auth import Role
from modelrunner.client import ModelRunnerClient
from modelrunner.entry_server import start_control_server
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.serving import RunningServer, start_embedded
from modelrunner.settings import Settings
from modelrunner.tls import check_exposure, is_loopback_host
from tests.certificates import Certificates, make_certificates
from tests.tiny_models import build_onnx_identity

IMAGE = np.arange(36, dtype="float32").reshape(6, 6)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_onnx_identity(tmp_path_factory.mktemp("tls-model") / "m", name="tls-identity")


def _settings(tmp: Path, certs: Certificates, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "flight_port": 0,
        "cache_dir": tmp / "cache",
        "heartbeat_interval_s": 1.0,
        "grace_period_s": 0.5,
        "auth": True,
        "tls_cert_file": certs.server_cert,
        "tls_key_file": certs.server_key,
        "tls_ca_file": certs.ca,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[tuple[RunningServer, str]]:
    settings = _settings(tmp_path_factory.mktemp("tls"), certs)
    token, _ = TokenStore(settings.effective_tokens_file).create("eve", Role.WRITE, "lab")
    with start_embedded(settings) as running:
        yield running, token


def test_both_planes_speak_tls_and_predict(
    tls_server: tuple[RunningServer, str], certs: Certificates, package: Path
) -> None:
    running, token = tls_server
    assert running.runtime is not None and running.runtime.flight_uri.startswith("grpc+tls://")
    with ModelRunnerClient(running.address, token=token, tls=certs.ca, timeout=60) as client:
        info = client.add_model(package, upload=True)
        np.testing.assert_array_equal(client.predict(info.id, IMAGE)["output"].reshape(6, 6), IMAGE)


def test_a_plaintext_client_cannot_talk_to_a_tls_server(
    tls_server: tuple[RunningServer, str],
) -> None:
    running, token = tls_server
    with (
        ModelRunnerClient(running.address, token=token, timeout=5) as client,
        pytest.raises(errors.UnavailableError),
    ):
        client.list_models()


def test_a_client_that_does_not_trust_the_servers_ca_is_refused(
    tls_server: tuple[RunningServer, str], certs: Certificates
) -> None:
    """A man in the middle with a certificate from another CA is not believed."""
    running, token = tls_server
    with (
        ModelRunnerClient(running.address, token=token, tls=certs.other_ca, timeout=5) as client,
        pytest.raises(errors.UnavailableError),
    ):
        client.list_models()


def test_mutual_tls_refuses_clients_without_a_certificate(
    tmp_path: Path, certs: Certificates, package: Path
) -> None:
    settings = _settings(tmp_path, certs, tls_client_ca_file=certs.ca)
    token, _ = TokenStore(settings.effective_tokens_file).create("eve", Role.WRITE, "lab")
    with start_embedded(settings) as running:
        with (
            ModelRunnerClient(running.address, token=token, tls=certs.ca, timeout=5) as client,
            pytest.raises(errors.UnavailableError),
        ):
            client.list_models()
        with ModelRunnerClient(
            running.address,
            token=token,
            tls=certs.ca,
            client_cert=(certs.client_cert, certs.client_key),
            timeout=60,
        ) as client:
            info = client.add_model(package, upload=True)
            out = client.predict(info.id, IMAGE)["output"]
            np.testing.assert_array_equal(out.reshape(6, 6), IMAGE)


def test_a_missing_certificate_file_is_named(tmp_path: Path, certs: Certificates) -> None:
    settings = _settings(tmp_path, certs, tls_cert_file=tmp_path / "nope.pem")
    with pytest.raises(errors.InvalidArgumentError, match=r"nope\.pem"):
        start_control_server(settings)


@pytest.mark.parametrize(
    ("auth", "tls", "missing"),
    [
        (False, False, "authentication and TLS"),
        (True, False, "TLS"),
        (False, True, "authentication"),
    ],
)
def test_a_server_refuses_to_listen_beyond_loopback_unprotected(
    tmp_path: Path, certs: Certificates, auth: bool, tls: bool, missing: str
) -> None:
    """Refused before anything binds: no test server ever listens beyond loopback."""
    overrides: dict[str, Any] = {"host": "0.0.0.0", "auth": auth}
    if not tls:
        overrides.update(tls_cert_file=None, tls_key_file=None)
    with pytest.raises(errors.FailedPreconditionError) as caught:
        start_control_server(_settings(tmp_path, certs, **overrides))
    assert f"without {missing}" in caught.value.message
    assert "--insecure" in caught.value.message


def test_insecure_is_an_explicit_choice() -> None:
    check_exposure("0.0.0.0", plane="runtime", auth=False, tls=False, insecure=True)
    check_exposure("10.1.2.3", plane="runtime", auth=True, tls=True, insecure=False)
    with pytest.raises(errors.FailedPreconditionError):
        check_exposure("::", plane="runtime", auth=False, tls=False, insecure=False)


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.5", False),
        ("my-host.example.org", False),
    ],
)
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
