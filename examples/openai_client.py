"""Talk to a running Switchyard with the official `openai` client.

Start the platform in one terminal, then run this in another, from the repository root:

    make serve
    .venv/bin/python examples/openai_client.py [--base-url http://127.0.0.1:8000/v1] [--model demo]

The quickstart's demo model has random weights, so its text is gibberish; the response shapes,
streaming and usage are what any model returns. Under a JSON schema or a forced tool call even
its output parses and validates.
"""

from __future__ import annotations

import argparse
import json

from openai import OpenAI

# A completions prompt may be token ids instead of text; any ids below the model's vocabulary size.
PROMPT_TOKEN_IDS = [100, 200, 300, 400, 500]


def list_models(client: OpenAI) -> None:
    print("models:", ", ".join(model.id for model in client.models.list()))


def chat(client: OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Say hello in five words."}],
        max_tokens=24,
        temperature=0.7,
        seed=0,
    )
    choice = response.choices[0]
    print(f"chat: {choice.message.content!r} (finish_reason={choice.finish_reason}, usage={response.usage})")


def stream_chat(client: OpenAI, model: str) -> None:
    stream = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Count to ten."}],
        max_tokens=48,
        stream=True,
        stream_options={"include_usage": True},
    )
    print("streamed chat: ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
        if chunk.usage is not None:  # the last chunk: no choices, only usage
            print(f"\n  usage: {chunk.usage}")


def complete_token_ids(client: OpenAI, model: str) -> None:
    response = client.completions.create(model=model, prompt=PROMPT_TOKEN_IDS, max_tokens=16, temperature=0)
    print(f"completion from token ids: {response.choices[0].text!r} (usage={response.usage})")


PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}


def json_output(client: OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Invent a person."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
        max_tokens=100,
    )
    person = json.loads(response.choices[0].message.content or "")
    print(f"json_schema output: {person} (finish_reason={response.choices[0].finish_reason})")


def tool_call(client: OpenAI, model: str) -> None:
    response = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
        parallel_tool_calls=False,  # exactly one call: a model that never stops calling runs to max_tokens
        max_tokens=100,
    )
    for call in response.choices[0].message.tool_calls or []:
        print(f"tool call: {call.function.name}({call.function.arguments}) id={call.id}")
    print(f"  finish_reason={response.choices[0].finish_reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="the server's /v1 URL")
    parser.add_argument("--model", default="demo", help="a model id from /v1/models")
    args = parser.parse_args()
    client = OpenAI(base_url=args.base_url, api_key="unused")  # Switchyard checks no key; the client wants one
    list_models(client)
    chat(client, args.model)
    stream_chat(client, args.model)
    complete_token_ids(client, args.model)
    json_output(client, args.model)
    tool_call(client, args.model)


if __name__ == "__main__":
    main()
