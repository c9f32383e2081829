"""Serve's id of the HTTP request being handled, read in one place.

Ray Serve exposes it only through a private function (`ray.serve.context`); this is the one use of
it, so a change in Ray touches this function alone.
"""

from __future__ import annotations

__all__ = ["serve_request_id"]


def serve_request_id() -> str:
    """The current request's id in Serve ("" outside a Serve request)."""
    from ray.serve import context

    return context._get_serve_request_context().request_id
