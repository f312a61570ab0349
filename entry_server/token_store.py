"""The tokens a server accepts, in one JSON file (``settings.auth_tokens_file``) holding only their
sha256, written atomically and readable by its owner only.

``modelrunner token create|list|revoke`` edits the file on the server's host (as ``htpasswd``
does for a web server); a running server sees the change at its next call, so a revoked token
stops working at once on the control service (runtimes that check tokens through the control
service keep a verdict for at most ``auth_cache_s``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from modelrunner import errors
from modelrunner.auth import (
    Identity,
    Role,
    checked_workspace,
    new_token,
    same_secret,
    token_hash,
    token_id_of,
)

logger = logging.getLogger(__name__)

FILE_VERSION = 1
_MAX_NAME = 64


@dataclass(frozen=True)
class TokenRecord:
    token_id: str
    name: str
    role: str
    workspace: str
    sha256: str
    created_at: str

    def identity(self) -> Identity:
        return Identity(
            token_id=self.token_id, name=self.name, role=Role(self.role), workspace=self.workspace
        )


class TokenStore:
    """Thread-safe; re-reads the file when it changed on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._by_id: dict[str, TokenRecord] = {}

    # -- checking -------------------------------------------------------------------------------

    def authenticate(self, token: str) -> Identity | None:
        """The identity of a known token, else None."""
        token_id = token_id_of(token)
        if token_id is None:
            return None
        with self._lock:
            self._refresh()
            record = self._by_id.get(token_id)
        if record is None or not same_secret(record.sha256, token_hash(token)):
            return None
        return record.identity()

    def records(self) -> list[TokenRecord]:
        with self._lock:
            self._refresh()
            return sorted(self._by_id.values(), key=lambda r: (r.workspace, r.name))

    def _refresh(self) -> None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._by_id = None, {}
            return
        # the inode too: every write replaces the file, so a revoke followed by a create of
        # the same size within one timestamp tick is still seen
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._stamp:
            return
        self._by_id = {r.token_id: r for r in _read(self.path)}
        self._stamp = stamp

    # -- editing (the ``modelrunner token`` commands) ---------------------------------------------

    def create(self, name: str, role: Role, workspace: str) -> tuple[str, TokenRecord]:
        """A new token (shown once: only its hash is kept) and its record."""
        if not name or len(name) > _MAX_NAME or not name.isprintable():
            raise errors.InvalidArgumentError(f"a token name is 1-{_MAX_NAME} printable characters")
        checked_workspace(workspace)
        if role is Role.CONTROL:
            raise errors.InvalidArgumentError(
                "the control role is the control service's own; it is never in the token file"
            )
        token, token_id = new_token()
        record = TokenRecord(
            token_id=token_id,
            name=name,
            role=role.value,
            workspace=workspace,
            sha256=token_hash(token),
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        )
        with self._editing() as records:
            if any(r.name == name for r in records):
                raise errors.InvalidArgumentError(f"a token named {name!r} exists already")
            records.append(record)
        return token, record

    def revoke(self, name_or_id: str) -> TokenRecord:
        with self._editing() as records:
            for i, r in enumerate(records):
                if name_or_id in (r.name, r.token_id):
                    return records.pop(i)
        raise errors.NotFoundError(f"no token named {name_or_id!r}")

    @contextmanager
    def _editing(self) -> Iterator[list[TokenRecord]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with open(lock_path, "a") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            records = _read_all(self.path) if self.path.exists() else []
            yield records
            _write(self.path, records)


_FILE_ROLES = frozenset(r.value for r in Role if r is not Role.CONTROL)
"""The roles a token in the file may have (``control`` is the control service's own)."""


def _read(path: Path) -> list[TokenRecord]:
    """The records the server honours."""
    return [r for r in _read_all(path) if _usable(path, r)]


def _read_all(path: Path) -> list[TokenRecord]:
    """Every record of the file (an edit keeps those the server refuses)."""
    try:
        data = json.loads(path.read_text())
        return [TokenRecord(**r) for r in data["tokens"]]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        # A broken file must not open the server: no token is accepted until it is mended.
        logger.error("cannot read the token file %s (%s): no token is accepted", path, exc)
        return []


def _usable(path: Path, record: TokenRecord) -> bool:
    """Whether a record can be honoured; one that cannot is refused once, when the file is read
    (its calls are UNAUTHENTICATED), never by a failing call."""
    if record.role not in _FILE_ROLES:
        logger.error(
            "the token file %s gives token %r (id %s) the unknown role %r: the token is refused "
            "until the file is mended (roles: %s)",
            path,
            record.name,
            record.token_id,
            record.role,
            ", ".join(sorted(_FILE_ROLES)),
        )
        return False
    return True


def _write(path: Path, records: list[TokenRecord]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps({"version": FILE_VERSION, "tokens": [asdict(r) for r in records]}, indent=1)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
