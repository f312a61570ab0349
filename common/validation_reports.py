"""Turn bioimageio.spec's ``ValidationSummary`` into a :class:`modelrunner.types.ValidationReport`.

Used by the control service (validation) and the runtime (model tests). Imports bioimageio.spec
only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from modelrunner import types

if TYPE_CHECKING:
    from bioimageio.spec import ValidationSummary


def _loc(loc: Any) -> tuple[str, ...]:
    return tuple(str(part) for part in (loc or ()))


def report_from_summary(summary: ValidationSummary, *, source: str = "") -> types.ValidationReport:
    details = []
    for d in summary.details:
        details.append(
            types.ValidationDetail(
                name=d.name,
                status=d.status,
                loc=_loc(d.loc),
                errors=tuple(
                    types.ValidationEntry(
                        loc=_loc(e.loc), msg=e.msg, type=str(e.type), traceback=e.traceback_md
                    )
                    for e in d.errors
                ),
                warnings=tuple(
                    types.ValidationEntry(
                        loc=_loc(w.loc), msg=w.msg, type=str(w.type), severity=int(w.severity)
                    )
                    for w in d.warnings
                ),
            )
        )
    try:
        markdown = _without_environments(summary).format_md()
    except Exception:  # noqa: BLE001 - rendering is a courtesy; the data above is the report
        markdown = ""
    return types.ValidationReport(
        status=summary.status,
        name=summary.name,
        source=source or str(summary.source_name),
        type=summary.type,
        format_version=summary.format_version,
        id=str(summary.id or ""),
        details=tuple(details),
        env={p.name: p.version for p in summary.env},
        markdown=markdown,
    )


def _without_environments(summary: ValidationSummary) -> ValidationSummary:
    """The summary without each check's recommended conda environment: rendering one runs
    ``conda compare`` (a subprocess, and on a server without conda a "Failed to run `conda
    compare`" section), and a server's report is about the model, not the caller's conda."""
    details = [d.model_copy(update={"recommended_env": None}) for d in summary.details]
    return summary.model_copy(update={"details": details})
