"""Serve's request context, read and set in one place.

Ray Serve exposes the context of the request being handled only through private functions
(`ray.serve.context`); this module is their one user, so a change in Ray touches it alone.
"""

from __future__ import annotations

import contextvars
import uuid
from typing import Any

__all__ = ["remote_as_own_request", "serve_request_id"]


def serve_request_id() -> str:
    """The current request's id in Serve ("" outside a Serve request)."""
    from ray.serve import context

    return context._get_serve_request_context().request_id


def remote_as_own_request(method: Any, *args: Any) -> Any:
    """`method.remote(*args)` (a deployment handle's method) as a request of its own to Serve.

    A handle call made while serving a request inherits that request's internal id, and Serve's
    router keys the calls waiting for a replica by it: two such calls in flight at once (the prompts
    of one batch) overwrite each other and one is never sent. Each call here gets its own id in a
    copy of the context, so the caller's context is unchanged. Serve then no longer cancels it with
    its parent; the Router cancels its calls itself when the client leaves.
    """
    from ray.serve import context

    def call() -> Any:
        context._set_request_context(_internal_request_id=uuid.uuid4().hex)
        return method.remote(*args)

    return contextvars.copy_context().run(call)
