"""What the description workers (:mod:`~modelrunner.entry_server.packages.description_workers`) run: the
parts of validating and adding that parse an untrusted description with bioimageio.spec.

Plain data in (paths, file records), plain data out (reports, ``ModelInfo``): results cross a
process boundary. Each job first checks the file against the YAML limits
(:mod:`~modelrunner.entry_server.packages.yaml_limits`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelrunner import types
from modelrunner.entry_server.packages import descriptions, metadata, yaml_limits
from modelrunner.entry_server.packages.content_hash import FileRecord
from modelrunner.entry_server.packages.validation import validate_description


@dataclass(frozen=True)
class ModelReading:
    """A package's model description, read and checked against its files."""

    info: types.ModelInfo
    rdf: dict[str, Any]
    """The description file's content as JSON-able data."""


def validate(rdf_path: Path, *, perform_io_checks: bool, source: str) -> types.ValidationReport:
    yaml_limits.check_description(rdf_path)
    return validate_description(rdf_path, perform_io_checks=perform_io_checks, source=source)


def read_model(
    rdf_path: Path,
    manifest: list[FileRecord],
    *,
    model_id: str,
    package_dir: Path,
    source: str,
) -> ModelReading:
    """The registry's view of the package; InvalidPackageError when it is not a valid model."""
    yaml_limits.check_description(rdf_path)
    loaded = descriptions.read_checked(rdf_path, manifest)
    info = metadata.model_info(
        loaded.descr,
        model_id=model_id,
        package_dir=package_dir,
        format_version=loaded.format_version,
        source=source,
        size_bytes=sum(r.size for r in manifest),
    )
    return ModelReading(info=info, rdf=loaded.rdf)


def referenced_files(rdf_path: Path) -> list[str] | None:
    """The files a description names (:func:`descriptions.referenced_files`), for staging."""
    yaml_limits.check_description(rdf_path)
    return descriptions.referenced_files(rdf_path)
