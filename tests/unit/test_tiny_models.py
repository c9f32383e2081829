"""Tiny random-weight models: loadable through the Auto* classes, deterministic, and non-degenerate."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from engine.demo.tiny_models import ARCHITECTURES, TinyModelSpec, write_tiny_model

PROMPTS = ("Hello, my name is", "The quick brown fox jumps over", "1 2 3 4 5")
ASCII_TEXT = "Hello, world!  a , b .\n\tdon't   stop\r\n<|im_start|> ~`{}[]"
NON_ASCII_TEXT = "Ünïcödé: 你好, мир 🙂👍🏽 ﬁ"
# "e" followed by a combining acute accent: not in Unicode normal form C.
DECOMPOSED_TEXT = "cafe\u0301"


@pytest.fixture(params=ARCHITECTURES)
def architecture(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model_dir(architecture: str, tiny_model_dirs: dict[str, Path]) -> Path:
    return tiny_model_dirs[architecture]


def _load(directory: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    return AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory)


def test_loads_through_auto_classes(architecture: str, model_dir: Path) -> None:
    model, tokenizer = _load(model_dir)
    config = model.config

    assert config.model_type == architecture
    assert model.dtype == torch.float32
    assert not config.tie_word_embeddings
    assert len(tokenizer) == config.vocab_size == TinyModelSpec().vocab_size
    assert (config.bos_token_id, config.eos_token_id, config.pad_token_id) == (
        tokenizer.bos_token_id,
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    )
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    assert (model_dir / "model.safetensors").is_file()


def test_attention_is_plain_causal(model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(model_dir)

    assert getattr(config, "sliding_window", None) is None
    assert not getattr(config, "use_sliding_window", False)


def test_tokenizer_round_trips_text(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    for text in (ASCII_TEXT, NON_ASCII_TEXT):
        assert tokenizer.decode(tokenizer.encode(text, add_special_tokens=False)) == text


def test_decomposed_text_round_trips_up_to_nfc_for_qwen2(architecture: str, model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    decoded = tokenizer.decode(tokenizer.encode(DECOMPOSED_TEXT, add_special_tokens=False))

    # AutoTokenizer loads transformers' Qwen2Tokenizer for qwen2, which normalises to NFC.
    if architecture == "qwen2":
        assert decoded == unicodedata.normalize("NFC", DECOMPOSED_TEXT)
    else:
        assert decoded == DECOMPOSED_TEXT


def test_tokenizer_adds_no_special_tokens(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    assert tokenizer("Hello").input_ids == tokenizer.encode("Hello", add_special_tokens=False)


def test_chat_template_renders_chatml(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]

    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    history = tokenizer.apply_chat_template(messages, tokenize=False)

    assert history == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    assert prompt == history + "<|im_start|>assistant\n"


def test_chat_template_writes_tools_calls_and_answers_in_hermes_blocks(model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    calls = [
        {"id": "a", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"id": "b", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}},
    ]
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": calls},
        {"role": "tool", "tool_call_id": "a", "content": "sunny"},
    ]
    prompt = tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False)
    system, user, assistant, tool, generation = prompt.split("<|im_start|>")[1:]
    assert system.startswith("system\nBe brief.\n\n# Tools") and json.dumps(tools[0]) in system
    assert user == "user\nWeather?<|im_end|>\n"
    assert assistant == (
        'assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call><|im_end|>\n'
    )
    assert tool == "user\n<tool_response>\nsunny\n</tool_response><|im_end|>\n"
    assert generation == "assistant\n"


def test_greedy_output_is_varied_and_never_special(model_dir: Path) -> None:
    model, tokenizer = _load(model_dir)

    for prompt in PROMPTS:
        input_ids = tokenizer(prompt, return_tensors="pt").input_ids
        output = model.generate(input_ids, max_new_tokens=32, do_sample=False)
        new_tokens = output[0, input_ids.shape[1] :].tolist()
        assert len(new_tokens) == 32, f"{prompt!r} stopped early: {new_tokens}"
        assert len(set(new_tokens)) >= 8, f"{prompt!r} gave repetitive output: {new_tokens}"
        assert not set(new_tokens) & set(tokenizer.all_special_ids)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_logits_are_finite_and_separated(model_dir: Path, dtype: torch.dtype) -> None:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    input_ids = torch.randint(5, model.config.vocab_size, (4, 64), generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        logits = model(input_ids).logits.float()
    top2 = logits.topk(2, dim=-1).values
    gaps = top2[..., 0] - top2[..., 1]

    assert torch.isfinite(logits).all()
    assert logits.abs().max() < 50
    assert gaps.median() > 0.2


def test_same_spec_gives_identical_weights(tmp_path: Path) -> None:
    first = load_file(write_tiny_model(tmp_path / "first") / "model.safetensors")
    second = load_file(write_tiny_model(tmp_path / "second") / "model.safetensors")
    reseeded = load_file(write_tiny_model(tmp_path / "reseeded", TinyModelSpec(seed=1)) / "model.safetensors")

    assert first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["model.embed_tokens.weight"], reseeded["model.embed_tokens.weight"])


def test_writing_leaves_global_rng_untouched(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    expected = torch.rand(4)
    torch.manual_seed(1234)
    write_tiny_model(tmp_path)

    assert torch.equal(torch.rand(4), expected)


def test_second_call_with_same_spec_does_not_rewrite(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    mtimes = {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()}

    assert write_tiny_model(tmp_path) == tmp_path
    assert {path.name: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == mtimes


def test_different_spec_rewrites_directory(tmp_path: Path) -> None:
    write_tiny_model(tmp_path)
    write_tiny_model(tmp_path, TinyModelSpec(vocab_size=300))

    assert json.loads((tmp_path / "config.json").read_text())["vocab_size"] == 300
    assert len(AutoTokenizer.from_pretrained(tmp_path)) == 300


def test_large_vocabulary_is_filled_with_distinct_decodable_tokens(tmp_path: Path) -> None:
    # Only the vocabulary is large: the model around it is as small as a valid spec allows.
    spec = TinyModelSpec(
        hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=8, vocab_size=32000
    )
    tokenizer = AutoTokenizer.from_pretrained(write_tiny_model(tmp_path, spec))

    assert len(tokenizer) == 32000
    assert len(set(tokenizer.convert_ids_to_tokens(list(range(32000))))) == 32000
    assert all(tokenizer.decode([token_id]) for token_id in range(32000))


@pytest.mark.parametrize(
    ("field", "value", "overrides"),
    [
        ("architecture", "'gpt2'", {"architecture": "gpt2"}),
        ("vocab_size", "260", {"vocab_size": 260}),
        ("vocab_size", "1000000", {"vocab_size": 1_000_000}),
        ("num_kv_heads", "3", {"num_heads": 4, "num_kv_heads": 3}),
        ("hidden_size", "66", {"hidden_size": 66, "num_heads": 4}),
        ("hidden_size", "12", {"hidden_size": 12, "num_heads": 4}),
        ("num_layers", "0", {"num_layers": 0}),
        ("intermediate_size", "-1", {"intermediate_size": -1}),
        ("seed", "-1", {"seed": -1}),
    ],
)
def test_invalid_spec_raises_naming_field_and_value(field: str, value: str, overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError) as error:
        TinyModelSpec(**overrides)

    assert field in str(error.value)
    assert value in str(error.value)
