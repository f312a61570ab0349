"""Who is calling: roles, identities and bearer tokens, shared by both planes and the client.

A token is ``mr_<token id>_<secret>``: the id names it in listings and logs, the secret is 32
random bytes (URL-safe base64). Servers keep only its sha256 (a fast hash is enough for a secret
of 256 random bits; there is nothing to guess). Every call carries it as gRPC metadata / a Flight
header ``authorization: Bearer <token>``.

Roles are ordered: each one may do what the ones below it may.

* ``read``: list and describe the models of its workspace, validate, route, predict, test.
* ``write``: also add models to its workspace, upload packages, remove its workspace's models.
* ``admin``: also everyone's models (any workspace, publish), the runtimes and the cache.

``runtime`` is apart from that order: the credential a runtime registers with, fetches packages
with and checks its callers' tokens with; it cannot use models itself. ``control`` is the control
service's own, never in the token file: one token per runtime, which only that runtime accepts
(to test and unload models) and the control service itself refuses, so a runtime that forwards
what it is sent gains nothing.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from modelrunner import errors

AUTHORIZATION_HEADER = "authorization"
TOKEN_PREFIX = "mr_"
DEFAULT_WORKSPACE = "default"
_TOKEN = re.compile(r"^mr_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
_WORKSPACE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Role(str, enum.Enum):
    READ = "read"
    WRITE = "write"
    ADMIN = "admin"
    RUNTIME = "runtime"
    CONTROL = "control"

    def allows(self, needed: Role) -> bool:
        """Whether a caller with this role may do what ``needed`` may."""
        if self is Role.CONTROL or needed is Role.CONTROL:
            return self is needed
        if self is Role.RUNTIME or needed is Role.RUNTIME:
            return self is needed or self is Role.ADMIN
        return _ORDER[self] >= _ORDER[needed]


_ORDER = {Role.READ: 0, Role.WRITE: 1, Role.ADMIN: 2}


@dataclass(frozen=True)
class Identity:
    """An authenticated caller."""

    token_id: str
    name: str
    role: Role
    workspace: str
    audience: str = ""
    """A ``control`` token: the runtime it was issued for (the only one that accepts it)."""

    def require(self, needed: Role | tuple[Role, ...], what: str) -> None:
        """PermissionDeniedError unless the role allows one of ``needed``."""
        roles = needed if isinstance(needed, tuple) else (needed,)
        if not any(self.role.allows(r) for r in roles):
            raise errors.PermissionDeniedError(
                f"{what} needs the {roles[0].value} role; token {self.name!r} has "
                f"{self.role.value}",
                details={"needed_role": roles[0].value, "role": self.role.value},
            )

    def sees_all_workspaces(self) -> bool:
        return self.role in (Role.ADMIN, Role.RUNTIME, Role.CONTROL)


ANONYMOUS = Identity(token_id="", name="anonymous", role=Role.ADMIN, workspace=DEFAULT_WORKSPACE)
"""The caller when authentication is off: the server is on loopback, everyone is its admin."""


def new_token() -> tuple[str, str]:
    """A fresh token and its id."""
    token_id = secrets.token_hex(6)
    return f"{TOKEN_PREFIX}{token_id}_{secrets.token_urlsafe(32)}", token_id


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_id_of(token: str) -> str | None:
    """The id part of a well-formed token, else None."""
    match = _TOKEN.match(token)
    return match.group(1) if match else None


def same_secret(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token_from_header(value: str | bytes | None) -> str | None:
    """The token of an ``authorization`` value (``Bearer <token>``), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def checked_workspace(name: str) -> str:
    if not _WORKSPACE.match(name):
        raise errors.InvalidArgumentError(
            "a workspace name is 1-64 characters of a-z, 0-9, '.', '_' and '-', starting with a "
            f"letter or digit; got {name[:80]!r}"
        )
    return name
