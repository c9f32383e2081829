"""The engine's exceptions.

    ValueError            bad input: a config field, a sampling parameter, a prompt (builtin)
    EngineError           the engine could not serve a valid request
    └── EngineDeadError   a step failed; the engine refuses work until it is replaced
"""

from __future__ import annotations

__all__ = ["EngineError", "EngineDeadError"]


class EngineError(RuntimeError):
    """The engine could not serve a valid request."""


class EngineDeadError(EngineError):
    """A step failed: requests in flight were ended and new ones are refused."""
