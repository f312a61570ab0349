"""TLS with a facility's own CA: a server or client that does not trust the certificate is told
which file to pass (``--tls-ca``), not OpenSSL's line alone."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelrunner import errors
from modelrunner.app import cli
from modelrunner.auth import Role
from modelrunner.entry_server.token_store import TokenStore
from modelrunner.serving import RunningServer, start_embedded, start_serving
from modelrunner.settings import Settings
from tests.certificates import Certificates, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def _settings(tmp: Path, certs: Certificates, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "flight_port": 0,
        "cache_dir": tmp / "cache",
        "grace_period_s": 0.5,
        "auth": True,
        "tls_cert_file": certs.server_cert,
        "tls_key_file": certs.server_key,
        "runtime_wait_s": 5,
    }
    values.update(overrides)
    return Settings(**values)


def test_serve_without_the_private_ca_names_the_flag_and_the_certificate(
    tmp_path: Path, certs: Certificates
) -> None:
    """The README's line without --tls-ca, for a certificate a private CA signed: the embedded
    runtime cannot verify its own control service."""
    with pytest.raises(errors.UnavailableError) as raised:
        start_serving(_settings(tmp_path, certs))
    assert raised.value.message == (
        f"the runtime does not trust the control service's certificate {certs.server_cert} "
        "(CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate): when your "
        "facility's or a private CA signed it, pass that CA's certificate with --tls-ca CA.pem "
        "(MODELRUNNER_TLS_CA_FILE); without it the system's roots are used"
    )


def test_serve_with_the_wrong_ca_says_it_did_not_sign_the_certificate(
    tmp_path: Path, certs: Certificates
) -> None:
    with pytest.raises(errors.UnavailableError) as raised:
        start_serving(_settings(tmp_path, certs, tls_ca_file=certs.other_ca))
    assert raised.value.message.endswith(
        f"the CA file --tls-ca {certs.other_ca} did not sign it: pass the CA that did"
    )


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certs: Certificates
) -> Iterator[tuple[RunningServer, str]]:
    settings = _settings(tmp_path_factory.mktemp("tls"), certs, tls_ca_file=certs.ca)
    token, _ = TokenStore(settings.effective_tokens_file).create("eve", Role.READ, "lab")
    with start_embedded(settings) as running:
        yield running, token


def _models(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["models", *argv])
    return code, capsys.readouterr().err


def test_a_client_without_the_ca_is_told_to_pass_it(
    tls_server: tuple[RunningServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    running, token = tls_server
    code, err = _models(capsys, "--server", running.address, "--token", token, "--tls")
    assert code == 1
    assert err == (
        f"error (UNAVAILABLE): the server at {running.address} presents a certificate this "
        "client does not trust (CERTIFICATE_VERIFY_FAILED: unable to get local issuer "
        "certificate): pass the certificate of the CA that signed it with --tls-ca CA.pem (or "
        "$MODELRUNNER_TLS_CA; in Python ModelRunnerClient(address, tls='CA.pem'))\n"
    )


def test_a_plaintext_client_is_told_the_server_may_speak_tls(
    tls_server: tuple[RunningServer, str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Not "no modelrunner server answers there": one does, in TLS."""
    running, token = tls_server
    code, err = _models(capsys, "--server", running.address, "--token", token)
    assert code == 1
    assert err == (
        f"error (UNAVAILABLE): the server at {running.address} closed the connection: if it "
        "speaks TLS (a server started with --tls-cert), connect with --tls-ca CA.pem (the CA "
        "that signed its certificate; or $MODELRUNNER_TLS_CA) or --tls (the system's roots)\n"
    )


def test_with_the_ca_the_client_is_in(
    tls_server: tuple[RunningServer, str], certs: Certificates, capsys: pytest.CaptureFixture[str]
) -> None:
    running, token = tls_server
    code = cli.main(
        ["models", "--server", running.address, "--token", token, "--tls-ca", str(certs.ca)]
    )
    assert code == 0
    assert capsys.readouterr().out.startswith("no models")
