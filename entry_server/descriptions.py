"""Reading bioimage.io descriptions with bioimageio.spec, for adding, staging and validating.

bioimageio.spec is imported inside the functions: the control service starts without it.
"""

from __future__ import annotations

import logging
import math
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from modelrunner import errors
from modelrunner.entry_server.content_hash import FileRecord

if TYPE_CHECKING:
    from bioimageio.spec import ValidationSummary
    from bioimageio.spec.model.v0_5 import ModelDescr as ModelDescr05

logger = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 5

SPEC_LOCK = threading.RLock()
"""Held around every call into bioimageio.spec: it parses YAML with one module-level ruyaml
parser, which breaks (``IndexError: pop from empty list``) when two threads load at once."""


@dataclass(frozen=True)
class LoadedModel:
    """A model description checked against the package's files."""

    descr: ModelDescr05
    """The description in format 0.5 (a 0.4 description converted by bioimageio.spec)."""
    format_version: str
    """The format version the package's file declares."""
    rdf: dict[str, Any]
    """The file's content as JSON-able data."""


class UnreadableYamlError(Exception):
    """The description file is not YAML (bioimageio.spec raises before validating)."""

    def __init__(self, rdf_path: Path, exc: Exception) -> None:
        mark = getattr(exc, "problem_mark", None)
        self.loc: tuple[str, ...] = (rdf_path.name,)
        if mark is not None:
            self.loc += (f"line {mark.line + 1}", f"column {mark.column + 1}")
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        super().__init__(f"{rdf_path.name} is not valid YAML: {problem}")


def read_rdf(rdf_path: Path) -> dict[str, Any]:
    """The description file's content as JSON-able data (dates become ISO strings)."""
    from bioimageio.spec.utils import read_yaml

    try:
        with SPEC_LOCK:
            content = read_yaml(rdf_path)
    except Exception as exc:
        raise UnreadableYamlError(rdf_path, exc) from exc
    if not isinstance(content, dict):
        raise UnreadableYamlError(rdf_path, ValueError("the content is not a mapping"))
    return _jsonable(content)


def _jsonable(value: Any) -> Any:
    """Plain JSON data: dates as ISO strings, and infinities (0.4 ``data_range: [-.inf, .inf]``)
    and NaN as the strings "inf", "-inf", "nan", which every JSON parser accepts."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if callable(isoformat) else str(value)


def remote_urls(data: object) -> set[str]:
    """Every http(s) URL string anywhere in the description's content."""
    if isinstance(data, str):
        return {data} if data.startswith(("http://", "https://")) else set()
    if isinstance(data, dict):
        return set().union(*(remote_urls(v) for v in data.values())) if data else set()
    if isinstance(data, list):
        return set().union(*(remote_urls(v) for v in data)) if data else set()
    return set()


def referenced_files(rdf_path: Path) -> list[str] | None:
    """The relative paths of the files a description names (as written, POSIX), or None when
    the description is too broken to tell."""
    from bioimageio.spec import InvalidDescr, load_description

    try:
        with SPEC_LOCK:
            descr = load_description(rdf_path, perform_io_checks=False)
    except Exception as exc:  # noqa: BLE001 - unreadable YAML: validating it reports the problem
        logger.info("cannot list the files of %s: %s", rdf_path, exc)
        return None
    if isinstance(descr, InvalidDescr):
        return None
    found: set[str] = set()
    _collect_file_paths(descr, found)
    return sorted(found)


def _collect_file_paths(value: object, found: set[str]) -> None:
    """Every file path (relative, or absolute local) anywhere in a description's fields.

    Walking the fields finds files in every format version without serializing the description
    (bioimageio.spec's packaging serializer insists the files already exist next to it).
    """
    from bioimageio.spec.common import HttpUrl, RelativeFilePath
    from pydantic import BaseModel

    if isinstance(value, RelativeFilePath):
        found.add(str(value))
    elif isinstance(value, PurePath):
        found.add(value.as_posix())
    elif isinstance(value, (HttpUrl, str, bytes, int, float)) or value is None:
        return
    elif isinstance(value, BaseModel):
        for name in type(value).model_fields:
            _collect_file_paths(getattr(value, name, None), found)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_file_paths(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect_file_paths(item, found)


def load_model(rdf_path: Path, manifest: list[FileRecord]) -> LoadedModel:
    """Load and check a package's model description; InvalidPackageError when it is invalid.

    The package's files are given as ``known_files`` with the hashes just computed, so
    bioimageio.spec checks every referenced file exists with the declared sha256 without hashing
    again; remote references are accepted unchecked and never downloaded here.
    """
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_4, v0_5

    try:
        rdf = read_rdf(rdf_path)
    except UnreadableYamlError as exc:
        raise errors.InvalidPackageError(str(exc), details={"file": rdf_path.name}) from exc
    # bioimageio.spec types the values as its Sha256 (a str); None: exists, hash unchecked.
    known: dict[str, Any] = {r.path: r.sha256 for r in manifest}
    known.update(dict.fromkeys(remote_urls(rdf)))
    with SPEC_LOCK:
        descr = load_description(rdf_path, perform_io_checks=False, known_files=dict(known))
    if isinstance(descr, InvalidDescr):
        raise errors.InvalidPackageError(
            f"{rdf_path.name} is not a valid bioimage.io description: "
            + summarize_errors(descr.validation_summary),
            details={"file": rdf_path.name},
        )
    if not isinstance(descr, (v0_4.ModelDescr, v0_5.ModelDescr)):
        raise errors.InvalidPackageError(
            f"{rdf_path.name} describes a {descr.type}, not a model", details={"type": descr.type}
        )
    # bioimageio.spec reports the newest patch version it read the file as; keep the declared one.
    format_version = str(rdf.get("format_version") or descr.format_version)
    if isinstance(descr, v0_4.ModelDescr):
        descr = _convert_to_v0_5(rdf_path, known)
    return LoadedModel(descr=descr, format_version=format_version, rdf=rdf)


def _convert_to_v0_5(rdf_path: Path, known: dict[str, Any]) -> ModelDescr05:
    from bioimageio.spec import InvalidDescr, load_description
    from bioimageio.spec.model import v0_5

    # The 0.4 -> 0.5 converter warns about guesses it makes (e.g. channel names); those are
    # remarks about the package, so they go to the log rather than the caller's warning filters.
    with SPEC_LOCK, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = load_description(
            rdf_path, perform_io_checks=False, known_files=dict(known), format_version="latest"
        )
    for warning in caught:
        logger.info("converting %s to format 0.5: %s", rdf_path, warning.message)
    if isinstance(converted, InvalidDescr) or not isinstance(converted, v0_5.ModelDescr):
        reason = (
            summarize_errors(converted.validation_summary)
            if isinstance(converted, InvalidDescr)
            else f"got a {type(converted).__name__}"
        )
        raise errors.InvalidPackageError(
            f"{rdf_path.name} is a valid format 0.4 model description that bioimageio.spec "
            f"cannot convert to format 0.5: {reason}",
            details={"file": rdf_path.name},
        )
    return converted


def summarize_errors(summary: ValidationSummary) -> str:
    """The first few errors of a validation summary as one line: ``loc: message; ...``."""
    found: list[str] = []
    for detail in summary.details:
        for error in detail.errors:
            loc = ".".join(str(part) for part in error.loc) or "(description)"
            found.append(f"{loc}: {error.msg}")
    if not found:
        return "validation failed without naming an error"
    more = len(found) - MAX_LISTED_ERRORS
    text = "; ".join(found[:MAX_LISTED_ERRORS])
    return text + (f"; and {more} more" if more > 0 else "")
