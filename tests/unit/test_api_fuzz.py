"""A schema fuzzer over the Router's OpenAPI schema (schemathesis, Hypothesis underneath): for every
generated request, valid or not, the answer is never a 5xx and every 4xx is in OpenAI's error shape.

The app is the real one over a fake model client (so the fuzzing reaches every validation path fast);
the engine's side of bad input is the soak suite's.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from benchmarks.soak.fuzz import served_models_only
from deployments.ingress.openai_app import build_openai_app
from tests.unit.test_openai_app import CARDS, MODEL, TokenizingClient

APP = build_openai_app({MODEL: TokenizingClient()}, CARDS)


schema = schemathesis.openapi.from_dict(served_models_only(APP.openapi(), [MODEL]))
schema.app = APP


@schema.parametrize()
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_generated_request_gets_a_5xx_and_every_4xx_is_openai_shaped(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
