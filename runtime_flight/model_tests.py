"""bioimageio.core's model test, run in this runtime, as a :class:`~modelrunner.types.ValidationReport`.

The test loads its own pipeline (the warm one in the pool is not touched, so on a GPU the model
briefly takes memory twice) and seeds the frameworks' random generators, as bioimageio.core does.
Each weight format is tested on its own call so that each gets the device argument its framework
understands (see :func:`.weight_formats.core_devices`); the reports are merged into one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelrunner.errors import DeviceNotAvailableError, FailedPreconditionError
from modelrunner.types import ValidationReport
from modelrunner.validation_reports import report_from_summary

from . import devices, weight_formats
from .descriptions import load_any_description, rdf_path

if TYPE_CHECKING:
    from bioimageio.spec import ValidationSummary

logger = logging.getLogger(__name__)


def run_model_test(
    package_dir: Path,
    *,
    weight_format: str | None = None,
    device: str | None = None,
    default_device: str | None = None,
    model_id: str = "",
) -> ValidationReport:
    """Test a model package like ``bioimageio.core.test_model``: every detail, error and warning.

    Args:
        weight_format: the format to test; None: every format the model has.
        device: where to run; None: ``default_device`` (else the runtime's default) for formats
            that run there, ``cpu`` for the others.

    Raises:
        ModelNotFoundError: no description in ``package_dir``.
        DeviceNotAvailableError: ``device`` does not exist, or cannot run ``weight_format``
            (without ``weight_format``, formats that cannot run on ``device`` run on cpu).
        InvalidArgumentError: the model has no ``weight_format`` weights.

    A model that fails to load or to reproduce its test outputs is a failed report (status
    ``failed``, where bioimageio.spec would say ``valid-format``), not an error.
    """
    import bioimageio.core
    from bioimageio.spec import InvalidDescr
    from bioimageio.spec.model import v0_5

    rdf = rdf_path(package_dir, model_id)
    descr = load_any_description(rdf, format_version="latest", perform_io_checks=False)
    if isinstance(descr, InvalidDescr) or not isinstance(descr, v0_5.ModelDescr):
        return _report(load_any_description(rdf), model_id)
    requested = devices.resolve_device(device) if device else None
    fallback = devices.default_device(default_device)
    formats = [weight_format] if weight_format else list(weight_formats.model_formats(descr))
    plans: list[tuple[str, str]] = []
    for fmt in formats:
        try:
            _, dev = weight_formats.choose(descr, fmt, requested, fallback)
        except DeviceNotAvailableError:
            if weight_format:
                raise
            logger.info("%s weights cannot run on %s here: testing them on cpu", fmt, requested)
            dev = devices.CPU
        except FailedPreconditionError:
            # no framework for it here: the test itself reports that, as data
            dev = requested or devices.CPU
        plans.append((fmt, dev))

    merged: ValidationSummary | None = None
    for fmt, dev in plans:
        logger.info("testing %s (%s) on %s", model_id or rdf, fmt, dev)
        # a description object, not the path: bioimageio.core would parse the YAML itself,
        # outside the lock that makes that thread-safe; a fresh one per format, since the test
        # adds its results to the description's summary
        fresh = load_any_description(rdf)
        if isinstance(fresh, InvalidDescr):
            return _report(fresh, model_id)
        summary = bioimageio.core.test_model(
            fresh,
            weight_format=fmt,  # type: ignore[arg-type]
            devices=weight_formats.core_devices(fmt, dev),
        )
        merged = summary if merged is None else _merge(merged, summary)
    assert merged is not None, "a model description lists at least one weight format"
    if any(d.status == "failed" for d in merged.details):
        # bioimageio.spec calls a valid description whose tests fail "valid-format"; as the
        # outcome of a model test that is a failure
        merged.status = "failed"
    return report_from_summary(merged, source=model_id)


def _report(invalid: Any, model_id: str) -> ValidationReport:
    """The report of a description that is invalid (or not a model): the format validation."""
    summary = invalid.validation_summary
    summary.status = "failed"
    return report_from_summary(summary, source=model_id)


def _merge(into: ValidationSummary, other: ValidationSummary) -> ValidationSummary:
    """Append ``other``'s details that ``into`` lacks (the format-specific tests); the status is
    failed when either failed."""
    seen = {(d.name, tuple(d.loc)) for d in into.details}
    for detail in other.details:
        if (detail.name, tuple(detail.loc)) not in seen:
            into.details.append(detail)
    if other.status == "failed":
        into.status = "failed"
    for package in other.env:
        into.env.add(package)
    return into
