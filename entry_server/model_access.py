"""Which workspaces see which models: a model added in a workspace is visible there, a published
model everywhere. Kept in ``<cache_dir>/model_access.json`` beside the cache's index (which can be
rebuilt from the package folders; this cannot, so it is its own file, written atomically).

Packages are content-addressed: two workspaces adding the same package share one copy, and a
workspace that removes it only leaves it; the package itself goes when no workspace holds it.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from modelrunner.auth import DEFAULT_WORKSPACE, Identity

logger = logging.getLogger(__name__)


class ModelAccess:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._workspaces: dict[str, set[str]] = {}
        self._published: set[str] = set()
        self._load()

    def visible(self, model_id: str, identity: Identity) -> bool:
        if identity.sees_all_workspaces():
            return True
        with self._lock:
            return model_id in self._published or identity.workspace in self._workspaces.get(
                model_id, ()
            )

    def workspaces(self, model_id: str) -> tuple[tuple[str, ...], bool]:
        """The workspaces holding the model, and whether it is published."""
        with self._lock:
            return tuple(sorted(self._workspaces.get(model_id, ()))), model_id in self._published

    def grant(self, model_id: str, workspace: str) -> None:
        with self._lock:
            held = self._workspaces.setdefault(model_id, set())
            if workspace in held:
                return
            held.add(workspace)
            self._save()

    def leave(self, model_id: str, workspace: str) -> bool:
        """Take the model out of one workspace; True when nothing holds it any more."""
        with self._lock:
            held = self._workspaces.get(model_id, set())
            held.discard(workspace)
            if not held:
                self._workspaces.pop(model_id, None)
            self._save()
            return not held and model_id not in self._published

    def publish(self, model_id: str, published: bool) -> None:
        with self._lock:
            if published:
                self._published.add(model_id)
            else:
                self._published.discard(model_id)
            self._save()

    def forget(self, model_id: str) -> None:
        with self._lock:
            self._workspaces.pop(model_id, None)
            self._published.discard(model_id)
            self._save()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            # Unreadable: models stay visible to admins only until it is mended.
            logger.error("cannot read %s (%s): models are visible to admins only", self.path, exc)
            return
        self._workspaces = {k: set(v) for k, v in data.get("workspaces", {}).items()}
        self._published = set(data.get("published", []))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        data = {
            "workspaces": {k: sorted(v) for k, v in sorted(self._workspaces.items())},
            "published": sorted(self._published),
        }
        tmp.write_text(json.dumps(data, indent=1))
        os.replace(tmp, self.path)


__all__ = ["DEFAULT_WORKSPACE", "ModelAccess"]
