"""What a failed load of a pipeline tells its caller: the framework's reason, typed (out of memory:
RESOURCE_EXHAUSTED, anything else: FAILED_PRECONDITION), with the model, format and device."""

from __future__ import annotations

from typing import Any

from modelrunner.errors import (
    FailedPreconditionError,
    InternalError,
    ModelRunnerError,
    ResourceExhaustedError,
)

from .warm_pipeline import Key


def load_error(error: Exception, key: Key) -> ModelRunnerError:
    model_id, fmt, device = key
    text = f"{type(error).__name__}: {error}"
    causes = getattr(error, "exceptions", ())  # bioimageio.core raises groups, one per device
    if causes:
        text += " (" + "; ".join(f"{type(c).__name__}: {c}" for c in causes) + ")"
    details: dict[str, Any] = {"model_id": model_id, "weight_format": fmt, "device": device}
    if isinstance(error, MemoryError) or "out of memory" in str(error).lower():
        return ResourceExhaustedError(
            f"out of memory loading {model_id} ({fmt}) on {device}: {text}", details=details
        )
    return FailedPreconditionError(
        f"cannot load {fmt} weights of {model_id} on {device}: {text}", details=details
    )


def load_error_again(error: BaseException) -> BaseException:
    """The error another thread's load failed with, for a thread that waited for that load."""
    if isinstance(error, ModelRunnerError):
        return type(error)(error.message, details=error.details)
    return InternalError(f"loading failed in another request: {type(error).__name__}: {error}")


def mib(n: int) -> str:
    return f"{n / 1024**2:.1f} MiB"
