"""A report's summary for a terminal never cuts a word: a warning is wrapped whole, an error
line shortened at a word boundary."""

from __future__ import annotations

from modelrunner.app.report_summary import WIDTH, report_summary
from modelrunner.types import ValidationDetail, ValidationEntry, ValidationReport

# bioimageio.spec's warning about the zoo's nuclei model, as `validate` printed it cut at
# "...Other weight formats are cr..."
LONG = (
    "Other weight formats than pytorch_state_dict and onnx are not recommended for new models "
    "as they are harder to convert and the tools that support them are fewer; "
    "Other weight formats are created from pytorch_state_dict or onnx when needed, so "
    "providing one of them is enough for most consumers of a model description."
)


def _report(**entries: tuple[ValidationEntry, ...]) -> ValidationReport:
    return ValidationReport(
        status="valid-format",
        details=(ValidationDetail(name="format", status="passed", **entries),),
    )


def test_a_long_warning_is_wrapped_whole() -> None:
    warning = ValidationEntry(loc=("weights",), msg=LONG, severity=30)
    text = report_summary(_report(warnings=(warning,)), "validation of m")
    lines = text.splitlines()
    start = lines.index("1 warning(s):") + 1
    wrapped = lines[start:]
    assert all(len(line) <= WIDTH for line in wrapped)
    assert " ".join(line.strip() for line in wrapped) == f"weights: {LONG}"
    assert wrapped[0].startswith("  weights: ") and all(
        line.startswith("    ") for line in wrapped[1:]
    )


def test_a_long_error_line_is_shortened_at_a_word() -> None:
    error = ValidationEntry(msg=LONG)
    text = report_summary(
        ValidationReport(
            status="failed",
            details=(ValidationDetail(name="format", status="failed", errors=(error,)),),
        ),
        "validation of m",
    )
    (line,) = [line for line in text.splitlines() if "error: " in line]
    shown = line.split("error: ", 1)[1]
    assert shown.endswith(" ...") and len(shown) <= 160
    assert LONG.startswith(shown[: -len(" ...")])  # whole words only
    assert LONG[len(shown) - len(" ...")] == " "
