"""The cache's index: an sqlite database (``index.sqlite``, WAL) of the models in ``models/``.

It holds what is costly to recompute: each model's metadata, description (as JSON), manifest
(per-file size and sha256), aliases (bioimage.io ids), times and whether it was found corrupt.
The folders under ``models/`` stay the truth: a missing or unreadable index is rebuilt from them.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from modelrunner import types
from modelrunner.entry_server.packages.content_hash import FileRecord

SCHEMA_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY,
    info_json TEXT NOT NULL,
    rdf_json TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    added_at REAL NOT NULL,
    last_used_at REAL NOT NULL,
    corrupt TEXT
);
CREATE TABLE IF NOT EXISTS files (
    model_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (model_id, path)
);
CREATE TABLE IF NOT EXISTS aliases (
    alias TEXT NOT NULL,
    model_id TEXT NOT NULL,
    PRIMARY KEY (alias, model_id)
);
"""


@dataclass(frozen=True)
class IndexEntry:
    info: types.ModelInfo
    """Without ``rdf``; ``size_bytes``, ``added_at`` and ``last_used_at`` filled in."""
    corrupt: str | None
    """Why the entry was found corrupt, or None."""

    @property
    def id(self) -> str:
        return self.info.id


class IndexUnreadableError(Exception):
    """The index file is not a usable database of this schema."""


def _ts(value: datetime) -> float:
    return value.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, tz=timezone.utc)


class CacheIndex:
    """Thread-safe access to the index database (one connection behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise IndexUnreadableError(f"cannot open {path}: {exc}") from exc
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            if self._db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise IndexUnreadableError(f"{path} failed sqlite's integrity check")
            self._db.executescript(_SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key='schema'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise IndexUnreadableError(f"{path} has schema {row[0]}, not {SCHEMA_VERSION}")
        except (sqlite3.Error, IndexUnreadableError) as exc:
            self._db.close()
            if isinstance(exc, IndexUnreadableError):
                raise
            raise IndexUnreadableError(f"{path} is not a usable index: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, params).fetchall()

    # -- reading ------------------------------------------------------------------------------

    def get(self, model_id: str) -> IndexEntry | None:
        rows = self._query(
            "SELECT info_json, size_bytes, added_at, last_used_at, corrupt FROM models "
            "WHERE id = ?",
            (model_id,),
        )
        return _entry(rows[0]) if rows else None

    def entries(self) -> list[IndexEntry]:
        rows = self._query(
            "SELECT info_json, size_bytes, added_at, last_used_at, corrupt FROM models "
            "ORDER BY added_at, id"
        )
        return [_entry(r) for r in rows]

    def ids_with_prefix(self, prefix: str) -> list[str]:
        # Model ids are hex, so the prefix holds no LIKE wildcards.
        return [r[0] for r in self._query("SELECT id FROM models WHERE id LIKE ?", (prefix + "%",))]

    def ids_with_alias(self, alias: str) -> list[str]:
        return [r[0] for r in self._query("SELECT model_id FROM aliases WHERE alias = ?", (alias,))]

    def manifest(self, model_id: str) -> list[FileRecord]:
        rows = self._query(
            "SELECT path, size, sha256 FROM files WHERE model_id = ? ORDER BY path", (model_id,)
        )
        return [FileRecord(path=p, size=s, sha256=h) for p, s, h in rows]

    def rdf(self, model_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT rdf_json FROM models WHERE id = ?", (model_id,))
        return json.loads(rows[0][0]) if rows else None

    def used_bytes(self) -> int:
        return int(self._query("SELECT COALESCE(SUM(size_bytes), 0) FROM models")[0][0])

    def least_recently_used(self) -> list[tuple[str, int]]:
        """(id, size) of every model, least recently used first."""
        rows = self._query("SELECT id, size_bytes FROM models ORDER BY last_used_at, added_at")
        return [(r[0], int(r[1])) for r in rows]

    # -- writing ------------------------------------------------------------------------------

    def put(
        self,
        info: types.ModelInfo,
        rdf: dict[str, Any],
        manifest: list[FileRecord],
        aliases: set[str],
    ) -> None:
        """Insert or replace the entry of ``info.id`` (clearing any corrupt mark)."""
        assert info.added_at is not None and info.last_used_at is not None
        stored = info.model_copy(update={"rdf": None})
        with self._transaction() as db:
            _delete(db, info.id)
            db.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, NULL)",
                (
                    info.id,
                    stored.model_dump_json(),
                    json.dumps(rdf),
                    info.size_bytes,
                    _ts(info.added_at),
                    _ts(info.last_used_at),
                ),
            )
            db.executemany(
                "INSERT INTO files VALUES (?, ?, ?, ?)",
                [(info.id, r.path, r.size, r.sha256) for r in manifest],
            )
            db.executemany(
                "INSERT INTO aliases VALUES (?, ?)", [(a, info.id) for a in sorted(aliases) if a]
            )

    def touch(self, model_id: str, when: datetime) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE models SET last_used_at = ? WHERE id = ?", (_ts(when), model_id)
            )

    def mark_corrupt(self, model_id: str, reason: str | None) -> None:
        with self._lock:
            self._db.execute("UPDATE models SET corrupt = ? WHERE id = ?", (reason, model_id))

    def delete(self, model_id: str) -> None:
        with self._transaction() as db:
            _delete(db, model_id)


def _delete(db: sqlite3.Connection, model_id: str) -> None:
    for table, column in (("models", "id"), ("files", "model_id"), ("aliases", "model_id")):
        db.execute(f"DELETE FROM {table} WHERE {column} = ?", (model_id,))


def _entry(row: tuple[Any, ...]) -> IndexEntry:
    info_json, size_bytes, added_at, last_used_at, corrupt = row
    info = types.ModelInfo.model_validate_json(info_json).model_copy(
        update={
            "size_bytes": int(size_bytes),
            "added_at": _dt(added_at),
            "last_used_at": _dt(last_used_at),
        }
    )
    return IndexEntry(info=info, corrupt=corrupt)
