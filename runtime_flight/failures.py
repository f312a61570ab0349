"""A framework's failure on a sample, as the caller reads it: the model, the input shapes it
was given, and the framework's own one-line reason; the interpreter's traceback (TorchScript's
serialized code, TensorFlow's graph trace) goes to the runtime's log only."""

from __future__ import annotations

import logging
import re

from bioimageio.spec.model import v0_5

from modelrunner.errors import InternalError, ModelRunnerError, ResourceExhaustedError, clip

logger = logging.getLogger(__name__)

_ERROR_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Failure)\b[^:]*:\s*\S")


def framework_reason(error: BaseException) -> str:
    """The framework's own one-line reason for ``error``: its message's last line of the form
    ``SomeError: ...`` when the message is an interpreter's traceback (TorchScript's serialized
    code, TensorFlow's graph trace), else its first line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if len(lines) == 1:
        return f"{type(error).__name__}: {clip(lines[0], 400)}"
    errors_named = [line for line in lines if _ERROR_LINE.match(line)]
    return clip(errors_named[-1] if errors_named else f"{type(error).__name__}: {lines[0]}", 400)


def failure(error: Exception, descr: v0_5.ModelDescr, shapes: str) -> ModelRunnerError:
    """A framework's failure on a sample, for the caller: the model, the input shapes and the
    framework's one-line reason (its traceback goes to the log only)."""
    reason = framework_reason(error)
    details = {"model": descr.name, "inputs": clip(shapes, 512)}
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return ResourceExhaustedError(
            f"out of memory while predicting with '{descr.name}' on inputs {shapes}: {reason}",
            details=details,
        )
    logger.debug("prediction with %r on %s failed", descr.name, shapes, exc_info=error)
    return InternalError(
        f"prediction with '{descr.name}' failed on inputs {shapes}: {reason}", details=details
    )
