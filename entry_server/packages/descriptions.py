"""Reading bioimage.io descriptions with bioimageio.spec, for adding, staging and validating.

bioimageio.spec is imported inside the functions: the control service starts without it.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

from modelrunner import errors
from modelrunner.entry_server.packages.content_hash import FileRecord
from modelrunner.entry_server.packages.fetch_policy import AddressNotAllowed, FetchPolicy

if TYPE_CHECKING:
    from bioimageio.spec import ValidationSummary
    from bioimageio.spec.model.v0_5 import ModelDescr as ModelDescr05

logger = logging.getLogger(__name__)

MAX_LISTED_ERRORS = 5

SPEC_LOCK = threading.RLock()
"""Held around every call into bioimageio.spec: it parses YAML with one module-level ruyaml
parser, which breaks (``IndexError: pop from empty list``) when two threads load at once."""


@dataclass(frozen=True)
class CheckedDescription:
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


FREE_FORM_KEYS = frozenset({"config"})
"""Top-level fields whose content bioimageio.spec does not interpret (and never opens as files)."""

_URL_SCHEMES = ("http://", "https://")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_REFERENCE_PREFIXES = ("conda:", "pip:", "maven:")
"""Format 0.4 dependency strings: ``conda:environment.yaml``."""


def outside_references(rdf: dict[str, Any]) -> list[str]:
    """Strings of the description that name a file outside its folder: absolute paths (also
    ``~`` and drive letters), ``file:`` URLs and paths with a ``..`` part.

    Read from the raw content, without touching the file system: the answer is the same whether
    such a file exists or not. Prose (strings with white space) and free-form fields are skipped.
    """
    found: list[str] = []
    for key, value in rdf.items():
        if key not in FREE_FORM_KEYS:
            _collect_outside(value, found)
    return found


def _collect_outside(value: object, found: list[str]) -> None:
    if isinstance(value, str):
        if _leaves_folder(value) and value not in found:
            found.append(value)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_outside(item, found)
    elif isinstance(value, list):
        for item in value:
            _collect_outside(item, found)


def candidate_files(rdf: dict[str, Any]) -> list[str]:
    """Every string of the description that could name a file in its folder (no white space,
    no URL; the file part of ``conda:env.yaml`` and ``unet.py:UNet`` too): what a package keeps
    when bioimageio.spec cannot read the description, so that validating it reports the real
    problems rather than missing files."""
    found: list[str] = []

    def walk(value: object) -> None:
        if isinstance(value, str):
            text = value.strip()
            if not text or any(c.isspace() for c in text) or text.startswith(_URL_SCHEMES):
                return
            for candidate in (text, text.split(":", 1)[-1], text.rsplit(":", 1)[0]):
                if candidate and candidate not in found:
                    found.append(candidate)
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    for key, value in rdf.items():
        if key not in FREE_FORM_KEYS:
            walk(value)
    return found


def _leaves_folder(text: str) -> bool:
    text = text.strip()
    if not text or any(c.isspace() for c in text) or text.startswith(_URL_SCHEMES):
        return False
    candidates = [text]
    if text.startswith(_REFERENCE_PREFIXES):
        candidates.append(text.split(":", 1)[1])
    if ":" in text:
        candidates.append(text.rsplit(":", 1)[0])  # 0.4 ``file.py:Callable``
    for candidate in candidates:
        if candidate.lower().startswith("file:"):
            return True
        if candidate.startswith(("/", "\\")) or _DRIVE.match(candidate):
            return True
        if candidate.startswith("~") and "/" in candidate:  # ~/x, ~user/x
            return True
        if ".." in re.split(r"[/\\]", candidate):
            return True
    return False


def check_io_fetches(rdf_path: Path, policy: FetchPolicy) -> None:
    """Before validating with io checks, in which bioimageio.spec downloads the remote files a
    description names and sends a request to every other URL in it: resolve the host of every
    http(s) URL in the description and refuse (PermissionDeniedError) when one is not a public
    address (nor in ``fetch_allowed_networks``). Hosts that do not resolve pass: nothing can
    reach them."""
    try:
        content = read_rdf(rdf_path)
    except UnreadableYamlError:
        return  # validating reports it
    for url in sorted(remote_urls(content)):
        try:
            policy.check_url(url)
        except AddressNotAllowed as exc:
            raise errors.PermissionDeniedError(
                f"validating {rdf_path.name} with io checks would fetch {url}, which is not "
                f"allowed: {exc.host} is not a public address, and the server fetches only from "
                "public addresses unless setting fetch_allowed_networks allows more",
                details={"url": url, "setting": "fetch_allowed_networks"},
            ) from exc


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

    inner = getattr(value, "_inner_node", None)
    if isinstance(inner, BaseModel):
        # Strings with a file inside, such as format 0.4's ``architecture: unet.py:UNet`` and
        # ``dependencies: conda:environment.yaml``.
        _collect_file_paths(inner, found)
    elif isinstance(value, RelativeFilePath):
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


def read_checked(rdf_path: Path, manifest: list[FileRecord]) -> CheckedDescription:
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
    return CheckedDescription(descr=descr, format_version=format_version, rdf=rdf)


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
