"""A cheap check of a description file before anything parses it into Python objects.

YAML aliases repeat the node they name without copying it: nine anchors of nine aliases each
("billion laughs") are a few hundred bytes that load into a small graph of shared lists, and
become a billion objects as soon as anything walks it (our JSON conversion, pydantic, deepcopy).
This check reads only the parser's events, counts each alias as the number of nodes it repeats,
and refuses a description with more than ``max_description_nodes`` nodes or larger than
``max_description_bytes``, in time proportional to the file's size.

It runs in the description workers with the server's settings and, with the defaults, wherever
the control service itself reads a description (:func:`check_description`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from modelrunner import errors
from modelrunner.entry_server.limits import over_limit
from modelrunner.settings import Settings


@dataclass(frozen=True)
class YamlLimits:
    max_bytes: int = Settings.model_fields["max_description_bytes"].default
    max_nodes: int = Settings.model_fields["max_description_nodes"].default

    @classmethod
    def from_settings(cls, settings: Settings) -> YamlLimits:
        return cls(
            max_bytes=settings.max_description_bytes, max_nodes=settings.max_description_nodes
        )


process_limits = YamlLimits()
"""The limits :func:`check_description` applies in this process; a description worker sets the
server's (it serves one server); elsewhere the defaults apply."""


def check_description(path: Path, limits: YamlLimits | None = None) -> None:
    """ResourceExhaustedError when the file is too large or expands to too many nodes.

    A file that is not YAML passes: parsing it reports the syntax error with its location.
    """
    limits = limits or process_limits
    size = path.stat().st_size
    if size > limits.max_bytes:
        raise over_limit(
            "max_description_bytes",
            limits.max_bytes,
            f"description {path.name} takes {size} bytes, more than the limit of "
            f"{limits.max_bytes} bytes",
            file=path.name,
        )
    with path.open("rb") as stream:
        nodes = count_nodes(stream.read(), stop_after=limits.max_nodes)
    if nodes > limits.max_nodes:
        raise over_limit(
            "max_description_nodes",
            limits.max_nodes,
            f"description {path.name} expands to more than {limits.max_nodes} YAML nodes, "
            "counting each alias as the nodes it repeats",
            file=path.name,
        )


def count_nodes(text: bytes | str, *, stop_after: int) -> int:
    """The number of nodes ``text`` loads to with aliases expanded; stops counting once it
    passes ``stop_after`` (and returns a number above it)."""
    from ruyaml import YAML, events
    from ruyaml.error import YAMLError

    anchored: dict[str, int] = {}
    open_collections: list[tuple[int, str | None]] = []  # (total when it started, its anchor)
    total = 0
    try:
        for event in YAML(typ="safe").parse(text):
            if isinstance(event, events.AliasEvent):
                total += anchored.get(str(event.anchor), 1)
            elif isinstance(event, events.ScalarEvent):
                total += 1
                if event.anchor is not None:
                    anchored[str(event.anchor)] = 1
            elif isinstance(event, events.CollectionStartEvent):
                total += 1
                anchor = None if event.anchor is None else str(event.anchor)
                open_collections.append((total - 1, anchor))
            elif isinstance(event, events.CollectionEndEvent) and open_collections:
                started, anchor = open_collections.pop()
                if anchor is not None:
                    anchored[anchor] = total - started
            if total > stop_after:
                return total
    except YAMLError:
        return total
    except (ValueError, UnicodeError) as exc:  # undecodable bytes: the reader says so later
        raise errors.InvalidPackageError(f"the description is not readable text: {exc}") from exc
    return total
