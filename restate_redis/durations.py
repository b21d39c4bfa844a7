"""Durations as the options and calls take them: seconds (int or float) or a timedelta."""

from __future__ import annotations

from datetime import timedelta

from .errors import InvalidOptionError

Duration = float | int | timedelta


def seconds(value: Duration, what: str, *, allow_zero: bool = False) -> float:
    """A duration option as float seconds; a timedelta or a number of seconds."""
    if isinstance(value, timedelta):
        secs = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        secs = float(value)
    else:
        raise InvalidOptionError(
            f"{what} must be seconds or a timedelta, got {type(value).__name__}"
        )
    if secs < 0 or (secs == 0 and not allow_zero) or secs != secs:
        raise InvalidOptionError(f"{what} must be positive, got {value!r}")
    return secs
