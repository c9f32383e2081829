"""Structured output: what a grammar costs, by library and inside the engine.

Table 1, the grammar libraries side by side on the benchmark Llama's 32k-token vocabulary:

    compile ms    a JSON schema turned into a matcher ready for its first mask, uncached
                  (llguidance: LLMatcher(...); xgrammar: GrammarCompiler.compile_json_schema with
                  its cache off), for a small schema (4 fields) and a large one (60 fields, nested)
    mask us       one step's work per constrained row: the next-token bitmask, then accepting the
                  chosen token, averaged over the tokens of a valid instance of the schema, on a
                  fresh matcher of a grammar compiled (and walked) before, as the engine's cache
                  hands them out

Table 2, the engine's throughput when 0%, 50% or 100% of a batch of requests is under the small JSON
schema: generated tokens per second, and the share of the run spent computing grammar masks.
Constrained requests end when their object is complete; free ones generate as many tokens as the
constrained ones did on average (measured first), so every row does the same work. Every
constrained output is checked to parse and validate.

Medians of --repeats runs, systems taking turns.

    .venv/bin/python benchmarks/structured_output.py
    .venv/bin/python benchmarks/structured_output.py --num-requests 8 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import jsonschema
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.workloads import ordinary_token_ids, prepare_model  # noqa: E402
from engine import EngineConfig, LLMEngine, SamplingParams, StructuredOutput  # noqa: E402
from engine.hardware import auto_dtype  # noqa: E402
from engine.structured.spec import JSON_LAYOUT  # noqa: E402

DEFAULT_MODEL_DIR = Path.home() / ".cache" / "switchyard" / "bench-llama"

SMALL_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 16},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 24},
        "languages": {"type": "array", "items": {"enum": ["en", "fr", "de"]}, "maxItems": 3},
    },
    "required": ["name", "age", "email", "languages"],
    "additionalProperties": False,
}
SMALL_INSTANCE = {"name": "Ada Lovelace", "age": 36, "email": "ada@example.com", "languages": ["en", "fr"]}


def _large_field(index: int) -> dict[str, object]:
    if index % 3 == 0:
        return {"type": "string", "maxLength": 40}
    if index % 3 == 1:
        return {"type": "integer", "minimum": 0}
    item = {"type": "object", "properties": {"k": {"type": "string"}, "v": {"type": "number"}}, "required": ["k", "v"]}
    return {"type": "array", "items": item}


LARGE_SCHEMA = {
    "type": "object",
    "properties": {f"field_{i}": _large_field(i) for i in range(60)},
    "required": [f"field_{i}" for i in range(60)],
    "additionalProperties": False,
}
LARGE_INSTANCE = {f"field_{i}": ["x" * 10, 7, [{"k": "a", "v": 1.5}]][i % 3] for i in range(60)}


def median_of(runs: int, measure: Callable[[], float]) -> float:
    return statistics.median(measure() for _ in range(runs))


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer: object, vocab_size: int) -> None:
        import llguidance.hf

        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
        self.vocab_size = vocab_size

    def compile(self, schema: dict[str, object]) -> object:
        from llguidance import LLMatcher

        return LLMatcher(self.tokenizer, LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT))

    def fresh(self, compiled: object) -> object:
        return compiled.deep_copy()  # type: ignore[attr-defined]

    def walk(self, matcher: object, token_ids: list[int]) -> None:
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

        bitmask = allocate_token_bitmask(1, self.vocab_size)
        for token_id in token_ids:
            fill_next_token_bitmask(matcher, bitmask, 0)
            assert matcher.consume_token(token_id), matcher.get_error()  # type: ignore[attr-defined]


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: object, vocab_size: int) -> None:
        import xgrammar

        info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size)
        self.compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        self.vocab_size = vocab_size

    def compile(self, schema: dict[str, object]) -> object:
        return self.compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(", ", ": "))

    def fresh(self, compiled: object) -> object:
        import xgrammar

        return xgrammar.GrammarMatcher(compiled)

    def walk(self, matcher: object, token_ids: list[int]) -> None:
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        for token_id in token_ids:
            matcher.fill_next_token_bitmask(bitmask, 0)  # type: ignore[attr-defined]
            assert matcher.accept_token(token_id)  # type: ignore[attr-defined]


def library_table(model_dir: Path, repeats: int) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    vocab_size = len(tokenizer)
    print(f"grammar libraries, {vocab_size}-token vocabulary, medians of {repeats}")
    columns = ("setup s", "small: compile ms", "mask us", "large: compile ms", "mask us")
    print(f"{'library':<11}", *(f"{column:>{len(column) + 1}}" for column in columns))
    for library_class in (LLGuidance, XGrammar):
        start = time.perf_counter()
        library = library_class(tokenizer, vocab_size)
        setup_s = time.perf_counter() - start
        cells = []
        for schema, instance in ((SMALL_SCHEMA, SMALL_INSTANCE), (LARGE_SCHEMA, LARGE_INSTANCE)):
            token_ids = tokenizer.encode(json.dumps(instance))

            def compile_seconds(schema: dict[str, object] = schema) -> float:
                start = time.perf_counter()
                library.compile(schema)
                return time.perf_counter() - start

            compiled = library.compile(schema)
            library.walk(library.fresh(compiled), token_ids)  # warms what the grammar builds lazily

            def walk_seconds(compiled: object = compiled, token_ids: list[int] = token_ids) -> float:
                matcher = library.fresh(compiled)
                start = time.perf_counter()
                library.walk(matcher, token_ids)
                return (time.perf_counter() - start) / len(token_ids)

            cells.append((median_of(repeats, compile_seconds) * 1e3, median_of(repeats, walk_seconds) * 1e6))
        (small_compile, small_mask), (large_compile, large_mask) = cells
        print(f"{library.name:<11} {setup_s:>8.2f} {small_compile:>18.2f} {small_mask:>8.0f} "
              f"{large_compile:>18.2f} {large_mask:>8.0f}")  # fmt: skip


# Constrained requests' budget: far more than the small schema's objects take.
CONSTRAINED_MAX_TOKENS = 256


def engine_run(
    engine: LLMEngine, prompts: list[list[int]], share: float, free_tokens: int
) -> tuple[float, float, int, float]:
    """(generated tokens per second, share of the run in grammar masks, constrained outputs that
    failed to validate, mean constrained output length) for one batch with `share` of its requests
    constrained and the others generating `free_tokens` each."""
    num_constrained = round(len(prompts) * share)
    spec = StructuredOutput.json_schema(SMALL_SCHEMA)
    params = [
        SamplingParams(max_tokens=CONSTRAINED_MAX_TOKENS, temperature=0.8, seed=i, structured_output=spec)
        if i < num_constrained
        else SamplingParams(max_tokens=free_tokens, temperature=0.8, seed=i, ignore_eos=True)
        for i in range(len(prompts))
    ]
    mask_seconds = 0.0
    fill = engine._fill_grammar_masks

    def timed_fill(batch: object) -> None:
        nonlocal mask_seconds
        start = time.perf_counter()
        fill(batch)  # type: ignore[arg-type]
        mask_seconds += time.perf_counter() - start

    engine._fill_grammar_masks = timed_fill  # type: ignore[method-assign]
    start = time.perf_counter()
    outputs = engine.generate(prompts, params)
    seconds = time.perf_counter() - start
    engine._fill_grammar_masks = fill  # type: ignore[method-assign]
    invalid = 0
    for output in outputs[:num_constrained]:
        try:
            jsonschema.validate(json.loads(output.text), SMALL_SCHEMA)
            invalid += output.finish_reason != "stop"
        except (json.JSONDecodeError, jsonschema.ValidationError):
            invalid += 1
    generated = sum(len(output.token_ids) for output in outputs)
    constrained_lengths = [len(output.token_ids) for output in outputs[:num_constrained]] or [0]
    return generated / seconds, mask_seconds / seconds, invalid, statistics.mean(constrained_lengths)


def engine_table(model_dir: Path, args: argparse.Namespace) -> None:
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype=args.dtype, max_num_seqs=args.num_requests))
    vocabulary = ordinary_token_ids(model_dir)
    rng = random.Random(0)
    prompts = [[rng.choice(vocabulary) for _ in range(rng.randint(32, 64))] for _ in range(args.num_requests)]
    shares = (0.0, 0.5, 1.0)
    # Warm-up (and the schema's compile), measuring how long the constrained outputs are.
    free_tokens = round(engine_run(engine, prompts, 1.0, 1)[3])
    runs: dict[float, list[tuple[float, float, int, float]]] = {share: [] for share in shares}
    for _ in range(args.repeats):
        for share in shares:
            runs[share].append(engine_run(engine, prompts, share, free_tokens))
    print(f"\nengine, {args.num_requests} requests (prompts 32-64 tokens, free ones {free_tokens} tokens, as long")
    print(f"as the constrained ones on average), {args.dtype}, {args.threads} threads, medians of {args.repeats}")
    print(f"{'json schema':>12} {'tokens/s':>9} {'vs 0%':>6} {'mask share':>11} {'invalid':>8}")
    baseline = statistics.median(run[0] for run in runs[0.0])
    for share in shares:
        throughput = statistics.median(run[0] for run in runs[share])
        mask_share = statistics.median(run[1] for run in runs[share])
        invalid = sum(run[2] for run in runs[share])
        print(f"{share:>12.0%} {throughput:>9.0f} {throughput / baseline:>6.2f} {mask_share:>11.1%} {invalid:>8}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-requests", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--dtype", default="auto", help="auto: bfloat16 where this CPU multiplies it fast, else float32"
    )
    parser.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.dtype = auto_dtype("cpu") if args.dtype == "auto" else args.dtype
    model_dir = prepare_model(args.model_dir)
    library_table(model_dir, max(args.repeats, 5))
    engine_table(model_dir, args)


if __name__ == "__main__":
    main()
