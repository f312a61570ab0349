"""Load a model package's description the way the runtime uses it: format 0.5, validated."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner.cache_layout import find_rdf
from modelrunner.errors import InvalidPackageError, ModelNotFoundError

if TYPE_CHECKING:
    from bioimageio.spec.model import v0_5

logger = logging.getLogger(__name__)

_YAML_LOCK = threading.Lock()
"""bioimageio.spec parses YAML with one module-level ruyaml parser, which breaks when two
threads use it at once: every description load in this process goes through this lock."""


def rdf_path(package_dir: Path, model_id: str = "") -> Path:
    rdf = find_rdf(package_dir) if package_dir.is_dir() else None
    if rdf is None:
        raise ModelNotFoundError(
            f"no model package for {model_id or package_dir}: {package_dir} holds no "
            + "bioimageio.yaml or rdf.yaml",
            details={"model_id": model_id, "path": str(package_dir)},
        )
    return rdf


def load_description(package_dir: Path, model_id: str = "") -> v0_5.ModelDescr:
    """The package's model description, converted to format 0.5 when it is older.

    Raises:
        ModelNotFoundError: no description file in ``package_dir``.
        InvalidPackageError: not a valid model description (the validation errors are listed),
            e.g. a file whose sha256 does not match the description.
    """
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec.model import v0_5

    rdf = rdf_path(package_dir, model_id)
    descr = load_any_description(rdf, format_version="latest")
    if isinstance(descr, InvalidDescr) or not isinstance(descr, v0_5.ModelDescr):
        errors = [
            f"{'.'.join(map(str, e.loc))}: {e.msg}"
            for d in descr.validation_summary.details
            for e in d.errors
        ]
        kind = "an invalid model description" if isinstance(descr, InvalidDescr) else descr.type
        raise InvalidPackageError(
            f"{model_id or package_dir} is {kind}" + (": " + "; ".join(errors) if errors else ""),
            details={"model_id": model_id, "path": str(rdf)},
        )
    return descr


def load_any_description(rdf: Path, **kwargs: Any) -> Any:
    """``bioimageio.spec.load_description``, thread-safe; may return an ``InvalidDescr``."""
    from bioimageio.spec import load_description as spec_load

    with _YAML_LOCK:
        return spec_load(rdf, **kwargs)


def weight_files(descr: v0_5.ModelDescr, weight_format: str) -> list[Path]:
    """Local files of one weight entry (weights, external data, architecture source)."""
    entry = getattr(descr.weights, weight_format, None)
    if entry is None:
        return []
    sources = [entry.source]
    external = getattr(entry, "external_data", None)
    if external is not None:
        sources.append(external.source)
    architecture = getattr(entry, "architecture", None)
    if architecture is not None and hasattr(architecture, "source"):
        sources.append(architecture.source)
    files: list[Path] = []
    for source in sources:
        try:
            path = source.absolute()
        except Exception:  # noqa: BLE001 - a remote or zipped source has no local size
            continue
        if isinstance(path, Path) and path.is_file():
            files.append(path)
    return files


def weights_bytes(descr: v0_5.ModelDescr, weight_format: str) -> int:
    return sum(p.stat().st_size for p in weight_files(descr, weight_format))
