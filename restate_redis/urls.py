"""Redis URLs as the command line shows them: never with the password."""

from __future__ import annotations

from .connection import redact

__all__ = ["redact"]
