"""Structured output in the engine: grammar masks per row of the continuous batch.

Constrained and free requests share steps; the free rows' greedy tokens are the ones they get
alone, and every constrained output (JSON schema, any JSON object, regex, choice, Lark grammar)
matches its grammar and finishes with "stop", on a random-weight model, greedy or sampled, with
chunked prefill and preemption. Bad grammars are refused at add_request, naming the problem.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import torch

from engine import EngineConfig, InvalidGrammarError, LLMEngine, SamplingParams, StructuredOutput
from engine.metrics.stats import StepStats
from engine.model.sampler import SamplingRow, apply_grammar_masks
from engine.structured.compiler import GrammarCompiler
from engine.structured.matcher import bitmask_words

PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "user"]},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "tags"],
    "additionalProperties": False,
}
EMAIL = r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)"
CHOICES = ["yes", "no", "maybe"]
LARK = 'start: "x=" NUMBER ";"\nNUMBER: /[1-9][0-9]{0,3}/'


def _checks() -> list[tuple[StructuredOutput, object]]:
    """Each structured output with a check of the text it produced."""

    def schema_check(text: str) -> None:
        jsonschema.validate(json.loads(text), PERSON_SCHEMA)

    def object_check(text: str) -> None:
        assert isinstance(json.loads(text), dict)

    def regex_check(text: str) -> None:
        assert re.fullmatch(EMAIL, text), text

    def choice_check(text: str) -> None:
        assert text in CHOICES

    def lark_check(text: str) -> None:
        assert re.fullmatch(r"x=[1-9][0-9]{0,3};", text), text

    return [
        (StructuredOutput.json_schema(PERSON_SCHEMA), schema_check),
        (StructuredOutput.json_object(), object_check),
        (StructuredOutput.regex(EMAIL), regex_check),
        (StructuredOutput.choice(CHOICES), choice_check),
        (StructuredOutput.grammar(LARK), lark_check),
    ]


SETUPS = {
    "continuous": {"num_kv_blocks": 256},
    "chunked": {"num_kv_blocks": 256, "max_num_batched_tokens": 6},
    # 32 blocks of 4 tokens cannot hold these sequences together: some are preempted and recomputed.
    "preempting": {"num_kv_blocks": 32, "block_size": 4},
}
PROMPTS = ["Describe a person", "Write an email", "Answer me", "Pick one", "Assign x", "free text", "more"]


@pytest.mark.parametrize("setup", list(SETUPS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_constrained_outputs_match_their_grammar_and_free_rows_are_unchanged(
    llama_dir: Path, setup: str, temperature: float
) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", **SETUPS[setup]))
    checks = _checks()
    free = SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    constrained = [
        SamplingParams(max_tokens=100, temperature=temperature, seed=7, structured_output=spec) for spec, _ in checks
    ]
    outputs = engine.generate(PROMPTS, constrained + [free, free])
    for output, (spec, check) in zip(outputs, checks):
        assert output.finish_reason == "stop", (spec.kind, output.text)
        check(output.text)
    alone = engine.generate(PROMPTS[-2:], free)
    assert [o.token_ids for o in outputs[-2:]] == [o.token_ids for o in alone]
    if setup == "preempting":
        assert engine.stats().num_preemptions > 0
    assert engine.stats().kv_blocks_used == 0 or engine.config.enable_prefix_caching


def test_grammar_mask_puts_disallowed_tokens_at_minus_infinity_and_leaves_other_rows_alone() -> None:
    vocab = 70  # not a multiple of 32: the last word is partly padding
    logits = torch.randn(3, vocab)
    allowed = [3, 31, 32, 69]
    words = [0] * bitmask_words(vocab)
    for token_id in allowed:
        words[token_id // 32] |= 1 << (token_id % 32)
    mask = torch.tensor(words, dtype=torch.int64).to(torch.int32).numpy().tobytes()  # bit 31 wraps to negative
    rows = [
        SamplingRow(SamplingParams(), seed=0, num_output_tokens=0),
        SamplingRow(SamplingParams(), seed=0, num_output_tokens=0, allowed_token_bitmask=mask),
        SamplingRow(SamplingParams(), seed=0, num_output_tokens=0),
    ]
    masked = apply_grammar_masks(logits, rows)
    assert torch.equal(masked[0], logits[0]) and torch.equal(masked[2], logits[2])
    finite = torch.isfinite(masked[1]).nonzero().flatten().tolist()
    assert finite == allowed
    assert torch.equal(masked[1, allowed], logits[1, allowed])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (StructuredOutput.json_schema({"type": "objectx"}), "Invalid type"),
        (StructuredOutput.regex("a(b"), "unclosed group"),
        (StructuredOutput.grammar("start: missing_rule"), "missing_rule"),
    ],
)
def test_a_grammar_that_cannot_compile_is_refused_at_add_request(
    llama_dir: Path, spec: StructuredOutput, message: str
) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=32))
    with pytest.raises(InvalidGrammarError, match=message):
        engine.add_request("bad", "hi", SamplingParams(structured_output=spec))
    assert not engine.has_unfinished_requests()


def test_malformed_structured_outputs_are_refused_naming_the_problem() -> None:
    with pytest.raises(ValueError, match="choice must be a non-empty list"):
        StructuredOutput.choice([])
    with pytest.raises(ValueError, match="JSON schema must be an object"):
        StructuredOutput.json_schema([1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind must be one of"):
        StructuredOutput("yaml", "x")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="min_tokens cannot be combined"):
        SamplingParams(min_tokens=2, structured_output=StructuredOutput.json_object())


def test_a_request_aborted_while_its_grammar_compiles_leaves_nothing_behind(llama_dir: Path) -> None:
    stats: list[StepStats] = []
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=32), on_stats=stats.append)
    engine.add_request("r", "hi", SamplingParams(structured_output=StructuredOutput.json_schema(PERSON_SCHEMA)))
    assert engine.has_unfinished_requests()
    assert engine.abort_request("r")
    assert not engine.has_unfinished_requests()
    assert engine.step() == []
    (finished,) = [entry for step in stats for entry in step.finished]
    assert finished.finish_reason == "abort"


def test_a_tokenizer_llguidance_cannot_use_refuses_structured_requests_naming_why(llama_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    compiler = GrammarCompiler(tokenizer, len(tokenizer), eos_token_ids=set())  # no end-of-sequence token
    with pytest.raises(InvalidGrammarError, match="structured output is unavailable for this model: .*eos"):
        compiler.validate(StructuredOutput.json_object())


def test_boolean_schemas() -> None:
    assert StructuredOutput.json_schema(True) == StructuredOutput.json_schema({})  # anything
    with pytest.raises(ValueError, match="matches no output"):
        StructuredOutput.json_schema(False)


def test_a_mask_narrower_than_the_logits_allows_nothing_beyond_it() -> None:
    logits = torch.randn(1, 100)  # an LM head padded past the 64 tokens the mask covers
    mask = torch.tensor([-1, -1], dtype=torch.int64).to(torch.int32).numpy().tobytes()  # all 64 allowed
    row = SamplingRow(SamplingParams(), seed=0, num_output_tokens=0, allowed_token_bitmask=mask)
    masked = apply_grammar_masks(logits, [row])
    assert torch.isfinite(masked[0, :64]).all() and torch.isinf(masked[0, 64:]).all()


def test_a_compiled_grammar_is_cached_and_each_request_gets_its_own_state(llama_dir: Path) -> None:
    engine = LLMEngine(EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=32))
    compiler = engine.grammar_compiler
    assert isinstance(compiler, GrammarCompiler)
    spec = StructuredOutput.choice(["ab", "cd"])
    first, second = compiler.matcher(spec).result(), compiler.matcher(spec).result()
    assert len(compiler._compiled) == 1
    token_a = engine.tokenizer.encode("a")[0]
    assert first.accept(token_a)
    assert not first.is_finished
    assert second.accept(engine.tokenizer.encode("c")[0])  # the first's progress is not the second's


def test_structured_output_runs_in_an_engine_process(llama_dir: Path) -> None:
    """The spec crosses to the child, which compiles the grammar and masks its steps there."""
    import asyncio

    from engine import AsyncLLMEngine

    params = SamplingParams(
        max_tokens=100, temperature=0.0, structured_output=StructuredOutput.json_schema(PERSON_SCHEMA)
    )

    async def scenario() -> str:
        engine = AsyncLLMEngine(
            EngineConfig(model=str(llama_dir), dtype="float32", num_kv_blocks=64), engine_process=True, num_threads=1
        )
        await engine.start(timeout_s=120)
        try:
            outputs = [output async for output in engine.generate("r", "A person:", params)]
            with pytest.raises(InvalidGrammarError, match="Invalid type"):
                bad = SamplingParams(structured_output=StructuredOutput.json_schema({"type": "objectx"}))
                [output async for output in engine.generate("bad", "A person:", bad)]
        finally:
            await engine.shutdown()
        assert outputs[-1].finish_reason == "stop"
        return outputs[-1].text

    jsonschema.validate(json.loads(asyncio.run(scenario())), PERSON_SCHEMA)
