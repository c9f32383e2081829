"""/openapi.json for endpoints that read their own bodies: the request schemas FastAPI is told of.

The completions and tokenizer endpoints read the raw bytes themselves (`read_body`, size-limited
before any parsing) and validate them with `parse_body` (unsupported parameters named, nulls as
defaults), so FastAPI is given each body's schema to document, not a body to parse.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from deployments.ingress.protocol import ChatCompletionRequest, CompletionRequest, DetokenizeBody, TokenizeBody

__all__ = ["document_bodies", "request_schema"]

# The request bodies the endpoints read themselves, documented in /openapi.json.
_DOCUMENTED_BODIES: tuple[type[BaseModel], ...] = (
    CompletionRequest,
    ChatCompletionRequest,
    TokenizeBody,
    DetokenizeBody,
)
_SCHEMA_REF = "#/components/schemas/{model}"


def request_schema(body_type: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` for an endpoint reading a `body_type`; its nested models are added to the
    components by `document_bodies`."""
    schema = body_type.model_json_schema(ref_template=_SCHEMA_REF)
    schema.pop("$defs", None)
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def document_bodies(app: FastAPI) -> None:
    """Put the documented bodies' nested models into /openapi.json's components."""
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build_schema()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for body_type in _DOCUMENTED_BODIES:
                components.update(body_type.model_json_schema(ref_template=_SCHEMA_REF).get("$defs", {}))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
