"""Which path serves a warm pipeline's calls: the fast path (:mod:`.fast_path`) or
bioimageio.core's own pipeline (the reference), and why."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PathName = Literal["fast", "reference"]


@dataclass(frozen=True)
class ServingPath:
    name: PathName
    reason: str
    max_abs_error: float | None = None
    """The fast path's largest deviation from bioimageio.core on the package's test inputs."""
    precision_errors: dict[str, float] = field(default_factory=dict)
    """For each reduced precision the fast path offers, its largest deviation from full
    precision on the package's test inputs."""


NOT_CHECKED = ServingPath("reference", "the fast path was not checked for this pipeline")
