"""The error for a request over one of the server's resource limits.

Every limit is a setting; the error is ``ResourceExhaustedError`` (RESOURCE_EXHAUSTED) whose
message ends with ``(setting <name>)`` and whose details carry ``limit`` (the setting's name) and
``limit_value``, so clients and operators can tell which setting to raise.
"""

from __future__ import annotations

from modelrunner import errors


def over_limit(
    setting: str, value: object, message: str, **details: object
) -> errors.ResourceExhaustedError:
    """``message`` for the limit ``setting`` of ``value``; ``(setting <name>)`` is appended
    unless the message names the setting already."""
    named = f"(setting {setting})"
    return errors.ResourceExhaustedError(
        message if named in message else f"{message} {named}",
        details={**details, "limit": setting, "limit_value": value},
    )
