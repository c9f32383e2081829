"""The OpenAI API end to end: the real `openai` client against manifests/multi-model.yaml on Serve."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from ray import serve

from engine import EngineConfig, LLMEngine, SamplingParams

MODELS = ("llama-demo", "qwen-demo")
PROMPT = "The quick brown fox"


def client_for(app_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{app_url}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_endpoint_lists_every_model(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    assert sorted(model.id for model in client.models.list()) == sorted(MODELS)
    assert client.models.retrieve("qwen-demo").id == "qwen-demo"


@pytest.mark.parametrize("model", MODELS)
def test_completion_streamed_text_equals_non_streamed_text_at_temperature_zero(
    multi_model_app: str, model: str
) -> None:
    client = client_for(multi_model_app)
    whole = client.completions.create(model=model, prompt=PROMPT, max_tokens=24, temperature=0)
    stream = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=24, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    streamed_text = "".join(choice.text for chunk in chunks for choice in chunk.choices)
    assert streamed_text == whole.choices[0].text
    assert whole.usage is not None and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 24
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


@pytest.mark.parametrize("model", MODELS)
def test_chat_streamed_text_equals_non_streamed_text_at_temperature_zero(multi_model_app: str, model: str) -> None:
    client = client_for(multi_model_app)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0)
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=20, temperature=0, stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed_text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed_text == whole.choices[0].message.content
    assert whole.choices[0].message.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_each_model_answers_with_its_own_weights(multi_model_app: str, multi_model_dirs: dict[str, Path]) -> None:
    client = client_for(multi_model_app)
    answers = {}
    for model in MODELS:
        served = client.completions.create(model=model, prompt=PROMPT, max_tokens=16, temperature=0)
        offline = LLMEngine(EngineConfig(model=str(multi_model_dirs[model]), num_kv_blocks=64))
        expected = offline.generate([PROMPT], SamplingParams(max_tokens=16, temperature=0))[0]
        assert served.choices[0].text == expected.text
        answers[model] = served.choices[0].text
    assert answers["llama-demo"] != answers["qwen-demo"]


def test_token_id_prompt_and_sampling_parameters_are_honoured(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    seeded = [
        client.completions.create(
            model="llama-demo", prompt=[10, 11, 12, 13], max_tokens=12, temperature=0.9, top_p=0.9, seed=7
        )
        .choices[0]
        .text
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    two = client.completions.create(model="llama-demo", prompt=PROMPT, max_tokens=8, temperature=1.0, n=2, seed=3)
    assert [choice.index for choice in two.choices] == [0, 1]
    assert two.usage is not None and two.usage.completion_tokens == 16
    with_logprobs = client.chat.completions.create(
        model="qwen-demo",
        messages=[{"role": "user", "content": "hi"}],
        max_tokens=4,
        temperature=0,
        logprobs=True,
        top_logprobs=3,
    )
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) == 4 and all(len(entry.top_logprobs) == 3 for entry in content)
    assert all(entry.logprob == pytest.approx(entry.top_logprobs[0].logprob) for entry in content)


def test_vllm_extension_fields_reach_the_engine_through_the_openai_client(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    greedy = {"model": "llama-demo", "prompt": [10, 11, 12, 13], "max_tokens": 12, "temperature": 0}
    plain = client.completions.create(**greedy)
    steered = client.completions.create(
        **greedy, logit_bias={"77": 100}, extra_body={"repetition_penalty": 1.3, "min_tokens": 12, "min_p": 0.1}
    )
    assert steered.choices[0].text != plain.choices[0].text
    stream = client.completions.create(
        **greedy, stream=True, stream_options={"include_usage": True, "continuous_usage_stats": True}
    )
    usages = [chunk.usage.completion_tokens for chunk in stream if chunk.usage is not None]
    assert usages == sorted(usages) and usages[-1] == 12 and len(usages) > 2


@pytest.mark.parametrize("prompts", [["Once upon", "The cat", "Paged"], [[10, 11, 12], [20, 21]]])
def test_a_batch_of_prompts_equals_each_prompt_sent_alone(multi_model_app: str, prompts: list[Any]) -> None:
    client = client_for(multi_model_app)
    greedy = {"model": "llama-demo", "max_tokens": 6, "temperature": 0, "n": 2}
    alone = [client.completions.create(prompt=prompt, **greedy) for prompt in prompts]
    batch = client.completions.create(prompt=prompts, **greedy)
    expected = {2 * p + c.index: c.text for p, response in enumerate(alone) for c in response.choices}
    assert {choice.index: choice.text for choice in batch.choices} == expected
    assert batch.usage.prompt_tokens == sum(response.usage.prompt_tokens for response in alone)
    streamed: dict[int, str] = {}
    for chunk in client.completions.create(prompt=prompts, stream=True, **greedy):
        for choice in chunk.choices:
            streamed[choice.index] = streamed.get(choice.index, "") + choice.text
    assert streamed == expected


def test_echo_scores_the_prompt_as_an_evaluation_harness_asks(multi_model_app: str) -> None:
    client = client_for(multi_model_app)
    prompt = "The quick brown fox"
    scored = client.completions.create(model="qwen-demo", prompt=prompt, echo=True, logprobs=2, max_tokens=0)
    [choice] = scored.choices
    assert choice.text == prompt and scored.usage.completion_tokens == 0
    logprobs = choice.logprobs
    assert logprobs.token_logprobs[0] is None and len(logprobs.tokens) == scored.usage.prompt_tokens
    assert all(isinstance(value, float) and value <= 0 for value in logprobs.token_logprobs[1:])
    assert all(len(top) == 2 for top in logprobs.top_logprobs[1:])
    generated = client.completions.create(
        model="qwen-demo", prompt=prompt, echo=True, logprobs=0, max_tokens=3, temperature=0
    ).choices[0]
    plain = client.completions.create(model="qwen-demo", prompt=prompt, max_tokens=3, temperature=0).choices[0]
    assert generated.text == prompt + plain.text
    assert generated.logprobs.token_logprobs[: len(logprobs.tokens)] == pytest.approx(logprobs.token_logprobs)
    vllm_style = client.completions.create(
        model="qwen-demo", prompt=prompt, max_tokens=1, temperature=0, extra_body={"prompt_logprobs": 2}
    ).choices[0]
    entries = vllm_style.model_extra["prompt_logprobs"]
    assert entries[0] is None and len(entries) == len(logprobs.tokens)
    for entry, token_logprob in zip(entries[1:], logprobs.token_logprobs[1:]):
        own = [value for value in entry.values() if value["logprob"] == pytest.approx(token_logprob)]
        assert own and 2 <= len(entry) <= 3


def test_tokenize_then_detokenize_round_trips_through_the_router(multi_model_app: str) -> None:
    tokenized = httpx.post(
        f"{multi_model_app}/tokenize", json={"model": "qwen-demo", "prompt": "Hello there"}, timeout=60
    )
    assert tokenized.status_code == 200, tokenized.text
    body = tokenized.json()
    assert body["count"] == len(body["tokens"]) and body["max_model_len"] == 1024
    text = httpx.post(
        f"{multi_model_app}/detokenize", json={"model": "qwen-demo", "tokens": body["tokens"]}, timeout=60
    )
    assert text.json() == {"prompt": "Hello there"}


def test_sixteen_concurrent_streams_all_complete(multi_model_app: str) -> None:
    async def one(client: openai.AsyncOpenAI, index: int) -> tuple[str | None, int]:
        stream = await client.chat.completions.create(
            model="llama-demo",
            messages=[{"role": "user", "content": f"request {index}"}],
            max_tokens=32,
            temperature=0.7,
            seed=index,
            stream=True,
            stream_options={"include_usage": True},
        )
        finish_reason, usage_tokens = None, 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].finish_reason:
                finish_reason = chunk.choices[0].finish_reason
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
        return finish_reason, usage_tokens

    async def all_of_them() -> list[tuple[str | None, int]]:
        client = openai.AsyncOpenAI(base_url=f"{multi_model_app}/v1", api_key="unused", max_retries=0, timeout=120)
        return await asyncio.gather(*(one(client, index) for index in range(16)))

    results = asyncio.run(all_of_them())
    assert results == [("length", 32)] * 16


def test_client_disconnect_mid_stream_aborts_the_request_and_frees_its_blocks(multi_model_app: str) -> None:
    server = serve.get_deployment_handle("LLMServer:llama-demo", app_name="multi")
    before = server.stats.remote().result()
    max_tokens = 1500
    body = {"model": "llama-demo", "prompt": PROMPT, "max_tokens": max_tokens, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{multi_model_app}/v1/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        received = [line for line, _ in zip(lines, range(6))]
        assert all(line.startswith("data: {") or line == "" for line in received)
        running = server.stats.remote().result()
        assert running.num_running + running.num_waiting == 1 and running.kv_blocks_used > 0
    deadline = time.monotonic() + 60
    while (stats := server.stats.remote().result()).kv_blocks_used or stats.num_running:
        assert time.monotonic() < deadline, "the engine kept the disconnected request"
        time.sleep(0.1)
    # Aborted, not finished: far fewer tokens were generated than the request asked for.
    assert stats.num_generation_tokens - before.num_generation_tokens < max_tokens // 2
