"""What to tell someone whose TLS connection failed because a certificate is not trusted: the
file to pass, not OpenSSL's line alone.

A facility's own (or a private) CA signs the server's certificate far more often than a public
one does, and then every side that connects, the embedded runtime of ``modelrunner serve``
included, needs that CA's certificate: ``--tls-ca``. OpenSSL says "CERTIFICATE_VERIFY_FAILED:
unable to get local issuer certificate".
"""

from __future__ import annotations

import re
from pathlib import Path

from modelrunner import errors

_VERIFY_FAILED = "CERTIFICATE_VERIFY_FAILED"
_REASON = re.compile(r"CERTIFICATE_VERIFY_FAILED:?\s*([^:;)\n]*)")


def untrusted_certificate(message: str) -> bool:
    """Whether a connection error says the other side's certificate was not trusted."""
    return _VERIFY_FAILED in message


def _reason(message: str) -> str:
    found = _REASON.search(message)
    detail = found.group(1).strip() if found else ""
    return f"{_VERIFY_FAILED}: {detail}" if detail else _VERIFY_FAILED


def server_certificate_hint(address: str, message: str) -> str:
    """For a client: the server's certificate is signed by a CA it does not trust."""
    return (
        f"the server at {address} presents a certificate this client does not trust "
        f"({_reason(message)}): pass the certificate of the CA that signed it with --tls-ca "
        "CA.pem (or $MODELRUNNER_TLS_CA; in Python ModelRunnerClient(address, tls='CA.pem'))"
    )


def plaintext_refused_hint(address: str) -> str:
    """For a client without TLS whose connection the server closed at once."""
    return (
        f"the server at {address} closed the connection: if it speaks TLS (a server started "
        "with --tls-cert), connect with --tls-ca CA.pem (the CA that signed its certificate; "
        "or $MODELRUNNER_TLS_CA) or --tls (the system's roots)"
    )


def runtime_trust_error(
    cert_file: Path | None, ca_file: Path | None, message: str
) -> errors.UnavailableError:
    """For a runtime registering with its control service over TLS (the embedded one of
    ``modelrunner serve`` too): the service's certificate ``cert_file`` was not trusted."""
    certificate = f"certificate {cert_file}" if cert_file else "certificate"
    if ca_file is None:
        fix = (
            "when your facility's or a private CA signed it, pass that CA's certificate "
            "with --tls-ca CA.pem (MODELRUNNER_TLS_CA_FILE); without it the system's roots are "
            "used"
        )
    else:
        fix = f"the CA file --tls-ca {ca_file} did not sign it: pass the CA that did"
    return errors.UnavailableError(
        f"the runtime does not trust the control service's {certificate} ({_reason(message)}): "
        + fix,
        details={"setting": "tls_ca_file"},
    )
