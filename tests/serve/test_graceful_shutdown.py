"""A replica being taken down finishes the requests it is serving before its engine stops."""

from __future__ import annotations

import json
import threading

import httpx
from ray import serve

from deployments.app import build_app
from tests.serve.conftest import ServeCluster


def test_deleting_an_app_drains_the_stream_in_flight(serve_cluster: ServeCluster) -> None:
    args = serve_cluster.demo_app_args(
        "draining",
        engine={"max_model_len": 512, "num_kv_blocks": 64},
        deployment={"graceful_shutdown_timeout_s": 120},
    )
    url = serve_cluster.deploy("draining", build_app(args))
    max_tokens = 300
    body = {"model": "draining", "prompt": "drain", "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    body["stream_options"] = {"include_usage": True}
    deleting = threading.Thread(target=serve.delete, args=("draining",))
    events = []
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=120) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if not line:
                continue
            events.append(line)
            if len(events) == 1:
                deleting.start()  # the app goes away while its only request is streaming
    deleting.join(timeout=120)
    assert not deleting.is_alive()
    assert events[-1] == "data: [DONE]"
    usage = json.loads(events[-2].removeprefix("data: "))["usage"]
    assert usage["completion_tokens"] == max_tokens
    finish_reasons = [json.loads(event.removeprefix("data: "))["choices"] for event in events[:-2]]
    assert finish_reasons[-1][0]["finish_reason"] == "length"
