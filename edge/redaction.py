"""What operators see of journaled data: everything but the verification tokens."""

from __future__ import annotations

from typing import Any, Final

__all__ = ["redact"]

_REDACTED: Final = "<redacted>"


def redact(value: Any) -> Any:
    """`value` with verification tokens hidden: operators need the shape, not the secret."""
    if isinstance(value, dict):
        return {
            k: _REDACTED if k == "token" and isinstance(v, str) and v else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(item) for item in value]
    return value
