"""TLS material from PEM files, in the forms gRPC and Arrow Flight take, and the rule on which
interfaces a server may listen.

The certificates are read once, when a server or client starts; a missing or unreadable file
is an :class:`~modelrunner.errors.InvalidArgumentError` naming it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from modelrunner import errors

if TYPE_CHECKING:
    from modelrunner.settings import Settings

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def read_pem(path: Path | str, what: str) -> bytes:
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as exc:
        raise errors.InvalidArgumentError(f"cannot read the {what} {str(path)!r}: {exc}") from None
    if b"-----BEGIN" not in data:
        raise errors.InvalidArgumentError(f"the {what} {str(path)!r} is not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTls:
    """What a server presents, and, for mutual TLS, the roots every client's certificate must be
    signed by."""

    cert_chain: bytes
    private_key: bytes
    client_roots: bytes | None = None

    @classmethod
    def from_files(cls, cert: Path, key: Path | None, client_ca: Path | None = None) -> ServerTls:
        if key is None:
            raise errors.InvalidArgumentError("a TLS certificate needs its key (tls_key_file)")
        return cls(
            cert_chain=read_pem(cert, "TLS certificate"),
            private_key=read_pem(key, "TLS key"),
            client_roots=read_pem(client_ca, "client CA file") if client_ca else None,
        )

    @property
    def mutual(self) -> bool:
        """Whether every client must present a certificate signed by ``client_roots``."""
        return self.client_roots is not None

    def grpc_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.private_key, self.cert_chain)],
            root_certificates=self.client_roots,
            require_client_auth=self.mutual,
        )

    def flight_kwargs(self) -> dict[str, Any]:
        import pyarrow.flight as flight

        kwargs: dict[str, Any] = {
            "tls_certificates": [flight.CertKeyPair(self.cert_chain, self.private_key)]
        }
        if self.client_roots is not None:
            kwargs["verify_client"] = True
            kwargs["root_certificates"] = self.client_roots
        return kwargs


@dataclass(frozen=True)
class ClientTls:
    """The roots a client trusts (None: the system's) and the certificate it may present."""

    roots: bytes | None = None
    cert_chain: bytes | None = None
    private_key: bytes | None = None

    @classmethod
    def from_files(
        cls, ca: Path | str | None, cert: Path | None = None, key: Path | None = None
    ) -> ClientTls:
        if (cert is None) != (key is None):
            raise errors.InvalidArgumentError("a client certificate needs its key, and the reverse")
        return cls(
            roots=read_pem(ca, "CA file") if ca else None,
            cert_chain=read_pem(cert, "client certificate") if cert else None,
            private_key=read_pem(key, "client key") if key else None,
        )

    @classmethod
    def from_option(
        cls,
        tls: bool | str | Path | None,
        client_cert: tuple[str | Path, str | Path] | None = None,
    ) -> ClientTls | None:
        """The client's ``tls=`` (False: plaintext; True: TLS with the system's roots; a path:
        TLS with the roots in that PEM file) and ``client_cert=(cert, key)`` for mutual TLS."""
        if not tls and client_cert is None:
            return None
        cert, key = (Path(p) for p in client_cert) if client_cert else (None, None)
        return cls.from_files(None if tls is True or not tls else tls, cert, key)

    def grpc_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=self.roots,
            private_key=self.private_key,
            certificate_chain=self.cert_chain,
        )

    def flight_kwargs(self) -> dict[str, bytes]:
        kwargs: dict[str, bytes] = {}
        if self.roots is not None:
            kwargs["tls_root_certs"] = self.roots
        if self.cert_chain is not None and self.private_key is not None:
            kwargs["cert_chain"] = self.cert_chain
            kwargs["private_key"] = self.private_key
        return kwargs


def server_tls_for(settings: Settings) -> ServerTls | None:
    """What a server of this process presents; None without TLS."""
    if settings.tls_cert_file is None:
        return None
    return ServerTls.from_files(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )


def client_tls_for(settings: Settings) -> ClientTls:
    """What this process presents when it calls the other plane: the roots it trusts, and, for
    mutual TLS, a client certificate (its own server certificate when none is configured)."""
    cert, key = settings.tls_client_cert_file, settings.tls_client_key_file
    if cert is None and settings.tls_client_ca_file is not None:
        cert, key = settings.tls_cert_file, settings.tls_key_file
    return ClientTls.from_files(settings.tls_ca_file, cert, key)


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names only this machine (a wildcard or a name is not, but localhost)."""
    host = host.strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, *, plane: str, auth: bool, tls: bool, insecure: bool) -> None:
    """Refuse to listen beyond loopback without authentication and TLS, unless told to."""
    if is_loopback_host(host) or insecure:
        return
    missing = [what for what, on in (("authentication", auth), ("TLS", tls)) if not on]
    if not missing:
        return
    raise errors.FailedPreconditionError(
        f"refusing to listen on {host!r} for the {plane} without {' and '.join(missing)}: "
        "anyone on the network could use it (and read its traffic). Turn on --auth with "
        "--tls-cert/--tls-key, listen on 127.0.0.1, or pass --insecure to accept the risk",
        details={"host": host, "missing": ", ".join(missing)},
    )
