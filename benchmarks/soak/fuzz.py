"""A schema fuzzer against the live server: schemathesis generates requests, valid and not, from the
Router's own OpenAPI document, and each answer goes in the ledger like any other request."""

from __future__ import annotations

import copy
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings

from benchmarks.soak.client import classify_answer
from benchmarks.soak.ledger import Entry, Outcome

__all__ = ["fuzz", "served_models_only"]

_READ_TIMEOUT_S = 120


def served_models_only(document: dict[str, Any], models: list[str]) -> dict[str, Any]:
    """A copy of the OpenAPI document with every body's `model` limited to `models`, so that
    generated requests get past the model lookup instead of mostly testing the 404."""
    document = copy.deepcopy(document)
    for path in document["paths"].values():
        for operation in path.values():
            body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body and "model" in body.get("properties", {}):
                body["properties"]["model"] = {"type": "string", "enum": models}
    return document


def fuzz(base_url: str, model: str, headers: dict[str, str], examples_per_operation: int) -> list[Entry]:
    """`examples_per_operation` generated requests to each operation of the server's schema (blocking:
    run it in a thread), with `headers` (the API key); one entry per answer."""
    document = httpx.get(f"{base_url}/openapi.json", headers=headers, timeout=30).raise_for_status().json()
    schema = schemathesis.openapi.from_dict(served_models_only(document, [model]))
    entries: list[Entry] = []
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(
            max_examples=examples_per_operation,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def call(case: Any) -> None:
            # Generated bodies ask for up to max_model_len tokens; a stream's wait for its first token
            # is bounded by the Router, so the read timeout bounds every answer.
            try:
                response = case.call(base_url=base_url, headers=headers, timeout=_READ_TIMEOUT_S)
            except requests.Timeout as error:
                entries.append(Entry(Outcome.HUNG, detail=f"{type(error).__name__}: {error}"[:160]))
                return
            except requests.RequestException as error:
                entries.append(Entry(Outcome.CONNECTION_ERROR, detail=f"{type(error).__name__}: {error}"[:160]))
                return
            first_values = {name: values[0] for name, values in response.headers.items() if values}
            entries.append(classify_answer(response.status_code, first_values, response.content))

        call()
    return entries
