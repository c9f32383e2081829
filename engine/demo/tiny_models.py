"""Tiny random-weight causal LMs, written to a local directory like a downloaded checkpoint.

`write_tiny_model` saves a config, safetensors weights, a generation config and a tokenizer, so
`AutoModelForCausalLM.from_pretrained(directory)` and `AutoTokenizer.from_pretrained(directory)`
load them through the same code path as a real model. Tests, benchmarks and the quickstart demo
use these models; nothing here needs network access.

Weights. The default initialisation (normal, std 0.02) leaves every block's output negligible
next to the residual stream and gives near-uniform logits (std about 0.16, top-1 ahead of top-2
by about 0.03), so greedy choices hinge on noise and often land on EOS within a few dozen tokens.
Instead, every linear layer is drawn with std 1/sqrt(fan_in), so each attention and MLP block
contributes about as much as the token embedding (std 1) and the output depends on the context,
and the LM head is scaled so logits have std `_LOGIT_STD`: clear top-1 margins while staying
well inside bfloat16 range. The LM-head rows of the special tokens are zero, so their logit is
always 0 while the best ordinary token scores around 3 standard deviations above it: greedy
output in practice never contains EOS or chat markers and runs to the requested length.

Tokenizer. A byte-level BPE: the five special tokens (ids 0-4, see `_SPECIAL_TOKENS`), the 256
byte tokens, then merges of pairs of bytes (common English letters first) up to exactly
`vocab_size`, so every model token id decodes to something and any UTF-8 text round-trips.
Encoding adds no BOS token (prompts stay exactly what the caller sent); the chat template is
ChatML with `add_generation_prompt` support and adds no BOS either. For the qwen2 architecture
`AutoTokenizer` always loads transformers' `Qwen2Tokenizer`, which applies NFC normalisation and
Qwen's pre-tokenisation regex on top of the same vocabulary, so there text round-trips up to NFC.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import string
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    MistralConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen2Config,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

__all__ = [
    "ARCHITECTURES",
    "BENCHMARK_LLAMA",
    "DEMO_LLAMA",
    "TinyModelSpec",
    "tiny_model_config",
    "write_tiny_model",
]

ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "mistral")

_PAD_TOKEN = "<|pad|>"
_BOS_TOKEN = "<|begin_of_text|>"
_EOS_TOKEN = "<|end_of_text|>"
_IM_START_TOKEN = "<|im_start|>"
_IM_END_TOKEN = "<|im_end|>"
# Their position in this tuple is their token id.
_SPECIAL_TOKENS: tuple[str, ...] = (_PAD_TOKEN, _BOS_TOKEN, _EOS_TOKEN, _IM_START_TOKEN, _IM_END_TOKEN)
_PAD_ID = _SPECIAL_TOKENS.index(_PAD_TOKEN)
_BOS_ID = _SPECIAL_TOKENS.index(_BOS_TOKEN)
_EOS_ID = _SPECIAL_TOKENS.index(_EOS_TOKEN)

_NUM_BYTES = 256
_MIN_VOCAB_SIZE = len(_SPECIAL_TOKENS) + _NUM_BYTES
# One merge per ordered pair of bytes at most.
_MAX_VOCAB_SIZE = _MIN_VOCAB_SIZE + _NUM_BYTES * _NUM_BYTES

# Bytes whose pairs become merges first: lowercase letters by English frequency, the space,
# uppercase letters, digits, newline and punctuation. All other bytes follow in byte order.
_COMMON_BYTES: bytes = (
    "etaoinshrdlcumwfgypbvkjxqz ETAOINSHRDLCUMWFGYPBVKJXQZ0123456789\n" + string.punctuation
).encode("ascii")

# ChatML. Like encoding, it adds no BOS token. With tools, Hermes's (and Qwen's) format: the
# functions' signatures in the system turn, each call in a <tool_call> block of the assistant's
# turn, each tool answer in a <tool_response> block of a user turn.
_TOOLS_PREAMBLE = (
    "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
)
_TOOLS_INSTRUCTIONS = (
    "\n</tools>\n\nFor each function call, return a json object with function name and arguments "
    'within <tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, '
    '"arguments": <args-json-object>}\n</tool_call>'
)
_CHAT_TEMPLATE = (
    "{%- if tools %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0]['role'] == 'system' %}{{- messages[0]['content'] + '\\n\\n' }}{%- endif %}"
    "{{- " + json.dumps(_TOOLS_PREAMBLE) + " }}"
    "{%- for tool in tools %}{{- '\\n' + (tool | tojson) }}{%- endfor %}"
    "{{- " + json.dumps(_TOOLS_INSTRUCTIONS) + " + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if tools and loop.first and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{{- '<|im_start|>user\\n<tool_response>\\n' + message['content'] + '\\n</tool_response><|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] }}"
    "{%- for call in message['tool_calls'] or [] %}"
    "{%- set arguments = call['function']['arguments'] %}"
    "{{- '\\n' if message['content'] or not loop.first else '' }}"
    "{{- '<tool_call>\\n{\"name\": \"' + call['function']['name'] }}"
    "{{- '\", \"arguments\": ' + (arguments if arguments is string else arguments | tojson) + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Standard deviation of the logits over the vocabulary (see the module docstring).
_LOGIT_STD = 4.0

_MARKER_NAME = "tiny_model_spec.json"
# Part of the marker: bump it when the files written for a given spec change, so directories
# written by an older version of this module are rewritten instead of reused.
_FORMAT_VERSION = 2


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and seed of a tiny model; the same spec always gives the same files."""

    architecture: str = "llama"  # transformers model type, one of ARCHITECTURES
    hidden_size: int = 64  # width of the residual stream
    num_layers: int = 2  # number of decoder layers
    num_heads: int = 4  # attention (query) heads per layer
    num_kv_heads: int = 2  # key/value heads per layer (grouped-query attention)
    intermediate_size: int = 128  # width of the MLP's hidden layer
    vocab_size: int = 512  # tokenizer vocabulary == model vocabulary, exactly
    max_position_embeddings: int = 4096  # longest sequence the model and tokenizer accept
    seed: int = 0  # torch seed for the random weights
    tie_word_embeddings: bool = False  # the LM head shares the input embedding's weights

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        for name in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "intermediate_size",
            "max_position_embeddings",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.vocab_size, int) or not _MIN_VOCAB_SIZE <= self.vocab_size <= _MAX_VOCAB_SIZE:
            raise ValueError(
                f"vocab_size must be an integer from {_MIN_VOCAB_SIZE} ({len(_SPECIAL_TOKENS)} special tokens"
                f" + {_NUM_BYTES} byte tokens) to {_MAX_VOCAB_SIZE}, got {self.vocab_size!r}"
            )
        if self.num_heads % self.num_kv_heads != 0:
            raise ValueError(
                f"num_heads must be a multiple of num_kv_heads, got num_heads={self.num_heads}"
                f" and num_kv_heads={self.num_kv_heads}"
            )
        if self.hidden_size % self.num_heads != 0:
            raise ValueError(
                f"hidden_size must be a multiple of num_heads, got hidden_size={self.hidden_size}"
                f" and num_heads={self.num_heads}"
            )
        # Rotary position embeddings rotate pairs of dimensions within each head.
        if (self.hidden_size // self.num_heads) % 2 != 0:
            raise ValueError(
                f"hidden_size / num_heads (the head size) must be even, got hidden_size={self.hidden_size}"
                f" and num_heads={self.num_heads}"
            )


BENCHMARK_LLAMA = TinyModelSpec(
    architecture="llama",
    hidden_size=512,
    num_layers=8,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=1408,
    vocab_size=32000,
)

DEMO_LLAMA = TinyModelSpec(
    architecture="llama",
    hidden_size=256,
    num_layers=4,
    num_heads=8,
    num_kv_heads=4,
    intermediate_size=704,
    vocab_size=4096,
)


def write_tiny_model(directory: str | os.PathLike[str], spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Writes config, safetensors weights, generation_config and tokenizer files into `directory`.

    Returns the directory as a `Path`.

    Idempotent: if the directory already holds a model written from the same spec (a small marker
    file with the spec as JSON), it returns at once without rewriting. The marker is written last,
    so an interrupted write is redone by the next call.
    """
    path = Path(directory)
    marker = path / _MARKER_NAME
    marker_text = _marker_text(spec)
    if marker.is_file() and marker.read_text(encoding="utf-8") == marker_text:
        return path
    path.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    _build_tokenizer(spec).save_pretrained(path)
    _build_model(spec).save_pretrained(path)
    marker.write_text(marker_text, encoding="utf-8")
    return path


def _marker_text(spec: TinyModelSpec) -> str:
    content = {"format_version": _FORMAT_VERSION, "spec": dataclasses.asdict(spec)}
    return json.dumps(content, indent=2, sort_keys=True)


def _build_tokenizer(spec: TinyModelSpec) -> PreTrainedTokenizerFast:
    byte_chars = bytes_to_unicode()
    vocab = {token: token_id for token_id, token in enumerate(_SPECIAL_TOKENS)}
    for byte in range(_NUM_BYTES):
        vocab[byte_chars[byte]] = len(vocab)
    merges = _byte_pair_merges(spec.vocab_size - len(vocab), byte_chars)
    for left, right in merges:
        vocab[left + right] = len(vocab)

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # Already in the vocabulary: this marks them special, so text containing them encodes them
    # as single tokens and `skip_special_tokens` drops them.
    backend.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in _SPECIAL_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=_BOS_TOKEN,
        eos_token=_EOS_TOKEN,
        pad_token=_PAD_TOKEN,
        # Saved explicitly as null: otherwise Qwen2Tokenizer (what AutoTokenizer loads for qwen2)
        # adds its default unknown token, making the tokenizer one token larger than the model.
        unk_token=None,
        add_bos_token=False,
        add_eos_token=False,
        chat_template=_CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
    )


def _byte_pair_merges(count: int, byte_chars: dict[int, str]) -> list[tuple[str, str]]:
    """The first `count` merges of two byte tokens, in rank order.

    Bytes are taken in `_COMMON_BYTES` order; each new byte adds its pairs with every byte before
    it (and itself), so all pairs among common characters rank before any pair with a rarer one.
    """
    ordered = list(_COMMON_BYTES) + [byte for byte in range(_NUM_BYTES) if byte not in _COMMON_BYTES]
    chars = [byte_chars[byte] for byte in ordered]
    merges: list[tuple[str, str]] = []
    for index, newest in enumerate(chars):
        if len(merges) >= count:
            break
        for older in chars[:index]:
            merges.append((older, newest))
            merges.append((newest, older))
        merges.append((newest, newest))
    return merges[:count]


def _build_model(spec: TinyModelSpec) -> PreTrainedModel:
    config = tiny_model_config(spec)
    # Seeded so the same spec gives identical weights; the forked RNG leaves the caller's global
    # torch random state as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config)
        _reinitialise(model, spec)
    model.generation_config = GenerationConfig(
        bos_token_id=_BOS_ID,
        eos_token_id=_EOS_ID,
        pad_token_id=_PAD_ID,
    )
    return model


def tiny_model_config(spec: TinyModelSpec) -> PreTrainedConfig:
    """The transformers config of a tiny model (what its config.json holds)."""
    common = {
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "bos_token_id": _BOS_ID,
        "eos_token_id": _EOS_ID,
        "pad_token_id": _PAD_ID,
        "tie_word_embeddings": spec.tie_word_embeddings,
        "dtype": "float32",
    }
    # Sliding-window attention stays off, so attention is plain causal at every length.
    if spec.architecture == "llama":
        return LlamaConfig(**common)
    if spec.architecture == "qwen2":
        return Qwen2Config(use_sliding_window=False, **common)
    return MistralConfig(sliding_window=None, **common)


@torch.no_grad()
def _reinitialise(model: PreTrainedModel, spec: TinyModelSpec) -> None:
    """Redraws embeddings and linear layers so greedy output is varied (see the module docstring)."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            module.weight.normal_(mean=0.0, std=1.0)
        elif isinstance(module, torch.nn.Linear):
            module.weight.normal_(mean=0.0, std=1.0 / math.sqrt(module.in_features))
            if module.bias is not None:
                module.bias.zero_()
    # The final norm scales hidden states to unit RMS, so this std gives logits of std _LOGIT_STD.
    lm_head = model.get_output_embeddings().weight
    lm_head.normal_(mean=0.0, std=_LOGIT_STD / math.sqrt(spec.hidden_size))
    lm_head[: len(_SPECIAL_TOKENS)].zero_()
