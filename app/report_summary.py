"""A validation or model-test report in a few lines for a terminal: the verdict, each check on
one line, and the tolerance the outputs were compared with.

bioimageio.core's own markdown report is complete but long (80 lines for one model, most of it
tables and recommended environments); ``--details`` still prints it.
"""

from __future__ import annotations

import re
import textwrap

from modelrunner.types import ValidationDetail, ValidationEntry, ValidationReport

_MARKS = {"passed": "ok  ", "failed": "FAIL"}

# bioimageio.core words its comparison of outputs as
#   "Output `probability`: all elements agree with expected values. \n Max relative difference
#    not accounted for by absolute tolerance (1.00e-03): ... relative tolerance (1.00e-03): ..."
# and "Output 'x': 12 of 4096 elements disagree with expected values (2.9 ppm). ..."
_OUTPUT_VERDICT = re.compile(r"^Output [`'](?P<name>[^`']+)[`']: (?P<verdict>[^.(]+)")
_ABSOLUTE = re.compile(r"absolute tolerance \((?P<value>[^)]+)\)")
_RELATIVE = re.compile(r"relative tolerance \((?P<value>[^)]+)\)")

WIDTH = 100
"""Warnings wrap at this many characters."""
INFO_SEVERITY = 20
"""bioimageio.spec's severity of an informational note (its ``INFO``); warnings are above."""


def report_summary(report: ValidationReport, title: str) -> str:
    """The report as a short text: ``title`` and the verdict, one line per check, one per output
    compared with the package's expected output (and its tolerance), then the warnings."""
    lines = [f"{title}: {report.status}"]
    for detail in report.details:
        lines.append(_check_line(detail))
        lines.extend(f"        {line}" for line in _comparisons(detail))
        lines.extend(
            f"        error: {_first_line(e.msg)}"
            for e in detail.errors
            if not _OUTPUT_VERDICT.match(e.msg)
        )
    warnings = [w for w in report.warnings if w.severity > INFO_SEVERITY]
    if warnings:
        lines.append(f"{len(warnings)} warning(s):")
        for w in warnings:
            # whole words, wrapped: a warning is often the one line a person acts on
            lines.extend(
                textwrap.wrap(
                    f"{_where(w)}{_first_line(w.msg, limit=None)}",
                    width=WIDTH,
                    initial_indent="  ",
                    subsequent_indent="    ",
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
    return "\n".join(lines)


def _check_line(detail: ValidationDetail) -> str:
    where = f" [{'.'.join(detail.loc)}]" if detail.loc else ""
    return f"  {_MARKS.get(detail.status, detail.status)}  {detail.name}{where}"


def _comparisons(detail: ValidationDetail) -> list[str]:
    """One line per output compared with the package's expected output, with its tolerance."""
    lines = []
    for entry in (*detail.errors, *detail.warnings):
        verdict = _OUTPUT_VERDICT.match(entry.msg)
        if verdict is None:
            continue
        tolerance = [
            f"{label} {found.group('value')}"
            for label, pattern in (("rtol", _RELATIVE), ("atol", _ABSOLUTE))
            if (found := pattern.search(entry.msg))
        ]
        text = f"output {verdict.group('name')!r}: {verdict.group('verdict').strip()}"
        lines.append(f"{text} ({', '.join(tolerance)})" if tolerance else text)
    return lines


def _where(entry: ValidationEntry) -> str:
    return f"{'.'.join(entry.loc)}: " if entry.loc else ""


def _first_line(text: str, limit: int | None = 160) -> str:
    """The first line, shortened at a word boundary to at most ``limit`` characters."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    if limit is None or len(line) <= limit:
        return line
    return textwrap.shorten(line, width=limit, placeholder=" ...")
