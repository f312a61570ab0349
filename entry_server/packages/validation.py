"""Validate a staged description with bioimageio.spec. The outcome is a report, also when the
description is invalid or not even YAML: only problems with the source itself are errors.

The control service runs this in a description worker (``description_jobs.validate``), bounded
in memory and time; over a limit the call fails with RESOURCE_EXHAUSTED rather than a report."""

from __future__ import annotations

from pathlib import Path

from modelrunner import types
from modelrunner.entry_server.packages.descriptions import SPEC_LOCK, UnreadableYamlError, read_rdf
from modelrunner.entry_server.packages.fetch_policy import guard_worker_process


def validate_description(
    rdf_path: Path, *, perform_io_checks: bool, source: str
) -> types.ValidationReport:
    """Validate the description at ``rdf_path``.

    With ``perform_io_checks``, bioimageio.spec also checks that the files it names exist and
    match their sha256 (downloading remote ones).
    """
    from bioimageio.spec import load_description

    from modelrunner.validation_reports import report_from_summary

    guard_worker_process()  # bioimageio.spec's own downloads reach only allowed addresses
    try:
        read_rdf(rdf_path)
    except UnreadableYamlError as exc:
        return _unreadable_report(exc, source)
    with SPEC_LOCK:
        descr = load_description(rdf_path, perform_io_checks=perform_io_checks)
        return report_from_summary(descr.validation_summary, source=source)


def _unreadable_report(exc: UnreadableYamlError, source: str) -> types.ValidationReport:
    entry = types.ValidationEntry(loc=exc.loc, msg=str(exc), type="yaml_syntax_error")
    return types.ValidationReport(
        status="failed",
        name="bioimageio format validation",
        source=source,
        details=(
            types.ValidationDetail(
                name="read the description file", status="failed", errors=(entry,)
            ),
        ),
        markdown=f"# Validation failed\n\n{source}: {exc}\n",
    )
