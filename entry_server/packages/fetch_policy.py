"""Which addresses the server may download from, and an httpx transport that connects only to
addresses it has checked.

The server fetches URLs for clients (URL sources, bioimage.io ids, the files a remote description
names, validation with io checks). Without a policy a client could make it reach its own loopback
services, the cloud metadata endpoint (169.254.169.254) or the facility's private network (SSRF).

Allowed: global (public) unicast addresses, and the networks of ``fetch_allowed_networks``.
Refused: loopback, private (RFC 1918, ULA ``fc00::/7``), link-local, multicast, unspecified,
shared (100.64/10), reserved and documentation ranges (anything :attr:`ipaddress.is_global`
calls non-global), also when written as IPv4-mapped IPv6 or reached through a host name.

The host name is resolved here, every address it resolves to is checked, and the connection is
made to a checked address: a name cannot resolve to a public address for the check and to a
private one for the connection (DNS rebinding). TLS still verifies the certificate for, and
sends SNI with, the host name of the URL, and the ``Host`` header is the URL's, because only the
TCP connection is redirected to the checked address.
"""

from __future__ import annotations

import ipaddress
import logging
import multiprocessing
import os
import socket
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

from modelrunner import errors

logger = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class AddressNotAllowed(Exception):
    """A host is, or resolves to, an address the policy refuses."""

    def __init__(self, host: str) -> None:
        super().__init__(f"{host} is not a public address")
        self.host = host


class FetchPolicy:
    """Decides which hosts the server may connect to."""

    def __init__(self, allowed_networks: Iterable[str] = ()) -> None:
        self.allowed_networks: tuple[IPNetwork, ...] = tuple(
            ipaddress.ip_network(n, strict=False) for n in allowed_networks
        )

    def is_allowed(self, address: IPAddress) -> bool:
        if isinstance(address, ipaddress.IPv6Address):
            # An IPv4 address inside IPv6 (mapped, 6to4, Teredo) is judged as that address.
            embedded = address.ipv4_mapped or address.sixtofour or _teredo_client(address)
            if embedded is not None:
                address = embedded
        for network in self.allowed_networks:
            if network.version == address.version and address in network:
                return True
        return (
            address.is_global
            and not address.is_multicast
            and not address.is_loopback
            and not address.is_link_local
            and not address.is_private
            and not address.is_reserved
            and not address.is_unspecified
            and not (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
        )

    def check_literal(self, host: str) -> None:
        """Refuse ``host`` at once when it is an IP address the policy refuses (no DNS, no
        connection); host names are checked when connecting."""
        address = ip_literal(host)
        if address is not None and not self.is_allowed(address):
            raise AddressNotAllowed(host)

    def resolve(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, each one checked.

        AddressNotAllowed when any of them is refused (a name with one public and one private
        address is refused: which one a connection uses is not ours to choose);
        ``httpcore.ConnectError`` when the name does not resolve.
        """
        literal = ip_literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except (OSError, UnicodeError) as exc:
                raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
            addresses = []
            for info in infos:
                address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
                if address not in addresses:
                    addresses.append(address)
        for address in addresses:
            if not self.is_allowed(address):
                logger.info("refused to connect to %s: it resolves to %s", host, address)
                raise AddressNotAllowed(host)
        return [str(a) for a in addresses]

    def check_url(self, url: str) -> None:
        """Resolve the host of an http(s) URL and check its addresses (AddressNotAllowed); a name
        that does not resolve passes, as nothing can connect to it."""
        parts = urlsplit(url)
        if not parts.hostname:
            return
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            return
        try:
            self.resolve(parts.hostname, port)
        except httpcore.ConnectError:
            return


def _teredo_client(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    teredo = address.teredo
    return teredo[1] if teredo is not None else None


def ip_literal(host: str) -> IPAddress | None:
    """``host`` as an IP address when it is one (``[::1]`` included), else None."""
    try:
        return ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return None


process_policy = FetchPolicy()
"""The policy :func:`guard_worker_process` applies: by default only public addresses. A
description worker may set the server's (``FetchPolicy(settings.fetch_allowed_networks)``)."""

_UNCHECKED_CONNECT_TCP = httpcore.SyncBackend.connect_tcp
_PROXY_VARIABLES = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
)


def guard_process(policy: FetchPolicy) -> None:
    """Make every TCP connection httpcore (so httpx) opens in this process go through
    ``policy``: resolved and checked here, then made to the checked address, for the first URL
    and every redirect alike.

    For a process that runs third-party code which fetches URLs itself: bioimageio.spec
    validating with io checks downloads the files a description names and sends requests to its
    other URLs, with httpx and ``follow_redirects=True``. Checking those URLs beforehand is not
    enough (a public URL may redirect to a private one, or its name resolve differently later).
    A refused connection raises PermissionDeniedError, which ends the validation (bioimageio.spec
    lets it through; where it catches every exception, as around its URL checks, the request is
    simply not made). Proxies from the environment are dropped: they would resolve names out of
    the policy's sight.
    """
    global process_policy
    process_policy = policy
    for name in _PROXY_VARIABLES:
        os.environ.pop(name, None)

    def connect_tcp(
        self: httpcore.SyncBackend,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        try:
            addresses = process_policy.resolve(host, port)
        except AddressNotAllowed as exc:
            raise errors.PermissionDeniedError(
                f"validation with io checks is not allowed to connect to {host}: it is not a "
                "public address, and the server fetches only from public addresses unless "
                "setting fetch_allowed_networks allows more",
                details={"host": host, "setting": "fetch_allowed_networks"},
            ) from exc
        return _connect_first(
            lambda address: _UNCHECKED_CONNECT_TCP(
                self,
                address,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            ),
            addresses,
        )

    httpcore.SyncBackend.connect_tcp = connect_tcp  # type: ignore[method-assign]


def _connect_first(
    connect: Callable[[str], httpcore.NetworkStream], addresses: list[str]
) -> httpcore.NetworkStream:
    """A connection to the first of the checked ``addresses`` that answers."""
    failure: Exception | None = None
    for address in addresses:
        try:
            return connect(address)
        except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
            failure = exc
    assert failure is not None  # resolve() returns at least one address or raises
    raise failure


def guard_worker_process() -> None:
    """:func:`guard_process` with :data:`process_policy`, in a child process (a description
    worker) only: the control service's own downloads have their checking transport."""
    if multiprocessing.parent_process() is not None:
        guard_process(process_policy)


class _CheckedNetworkBackend(httpcore.NetworkBackend):
    """httpcore's socket backend, connecting only to addresses the policy allows."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy
        self._sockets = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _connect_first(
            lambda address: self._sockets.connect_tcp(
                address,
                port,
                timeout=timeout,
                local_address=local_address,
                socket_options=socket_options,
            ),
            self._policy.resolve(host, port),
        )

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        raise AddressNotAllowed(path)

    def sleep(self, seconds: float) -> None:
        self._sockets.sleep(seconds)


class CheckedTransport(httpx.HTTPTransport):
    """``httpx.HTTPTransport`` whose connections go through the policy (no proxies, no unix
    sockets: a proxy would resolve names itself, out of the policy's sight)."""

    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__(trust_env=False)
        # HTTPTransport has no parameter for httpcore's network backend; its pool is rebuilt
        # with the same defaults and the checking backend.
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=_CheckedNetworkBackend(policy),
        )
