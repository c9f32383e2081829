"""The engine's exceptions.

ValueError                  bad input: a config field, a sampling parameter (builtin)
└── InvalidPromptError      a request the engine refuses: empty prompt, token ids outside the vocabulary
    ├── ContextLengthError  prompt + max_tokens exceed max_model_len, or need more than the KV pool
    └── InvalidGrammarError its structured output's schema, regex or grammar does not compile
EngineError             the engine could not serve a valid request
├── EngineDeadError     a step failed; the engine refuses work until it is replaced
└── EngineStoppedError  the engine was shut down (or never started); it refuses work
"""

from __future__ import annotations

__all__ = [
    "ContextLengthError",
    "EngineDeadError",
    "EngineError",
    "EngineStoppedError",
    "InvalidGrammarError",
    "InvalidPromptError",
]


class InvalidPromptError(ValueError):
    """`add_request` refused a request's prompt or length: the client's input is at fault, so a front
    end answers it as a bad request. Any other ValueError from the engine is a bug, not bad input."""


class ContextLengthError(InvalidPromptError):
    """The request can never run: prompt + max_tokens exceed max_model_len or the whole KV pool.

    Its own type so a front end can tell a too-long request (OpenAI's `context_length_exceeded`)
    from other bad input.
    """


class InvalidGrammarError(InvalidPromptError):
    """The request's structured output (JSON schema, regex, choice or grammar) does not compile;
    the message says why. Its own type so a front end can name the field that carried it."""


class EngineError(RuntimeError):
    """The engine could not serve a valid request."""


class EngineDeadError(EngineError):
    """A step failed: requests in flight were ended and new ones are refused."""


class EngineStoppedError(EngineError):
    """The engine was shut down, or is not running: nothing failed, but it serves no more."""
