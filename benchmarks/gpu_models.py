"""Random-weight Qwen2 checkpoints with real models' shapes, for timing on a GPU without downloads.

Only the shapes are real (Qwen2.5-0.5B's and 1.5B's: hidden size, layers, heads, MLP width,
the 151,936-token vocabulary, tied embeddings), so weight bytes, KV bytes and FLOPs per token are
those of the real models. No tokenizer is written: every system takes token ids. The reference
model (transformers, SDPA) is loaded here rather than through hf_runners, so the sections that
need only `generate` do not depend on transformers' continuous-batching API.

Weights follow engine/demo/tiny_models.py's reasoning: linear layers drawn with std
1/sqrt(fan_in), so each block matters and greedy output depends on the context, and the tied
embedding scaled so logits have std `_LOGIT_STD`, for clear top-1 margins in bfloat16. Tying adds
a pull towards repeating the current token: its embedding e sits in the residual stream r, so its
logit gains |e|^2 / rms(r) = _LOGIT_STD^2 / rms(r), which with plain 1/sqrt(fan_in) blocks is
over two logit standard deviations in a shallow model: greedy output then repeats one token
forever. The blocks' output projections are scaled so that their sum has RMS `_RESIDUAL_RMS` at
any depth, which keeps the pull at an eighth of a standard deviation. Token 0 is EOS and padding;
its embedding row is zero, so its logit is always 0 and greedy never picks it.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, GenerationConfig, PreTrainedModel, Qwen2Config

__all__ = [
    "EOS_TOKEN_ID",
    "QWEN2_5_0_5B",
    "QWEN2_5_1_5B",
    "SMALL_QWEN2",
    "ModelShape",
    "load_reference_model",
    "ordinary_tokens",
    "write_random_model",
]

EOS_TOKEN_ID = 0
# Standard deviation of the logits over the vocabulary.
_LOGIT_STD = 4.0
# RMS of the residual stream the blocks build up (see the module docstring).
_RESIDUAL_RMS = 8 * _LOGIT_STD
# The projections that write into the residual stream.
_OUTPUT_PROJECTIONS = ("o_proj", "down_proj")
_MARKER_NAME = "random_model_shape.json"


@dataclass(frozen=True)
class ModelShape:
    name: str
    hidden_size: int
    num_layers: int
    num_heads: int  # attention (query) heads
    num_kv_heads: int  # key/value heads (grouped-query attention)
    intermediate_size: int  # width of the MLP's hidden layer
    vocab_size: int
    # Longest sequence; the real models allow 32,768, the check never needs more than this.
    max_position_embeddings: int = 4096
    seed: int = 0


QWEN2_5_0_5B = ModelShape("qwen2.5-0.5b-shape", 896, 24, 14, 2, 4864, 151936)
QWEN2_5_1_5B = ModelShape("qwen2.5-1.5b-shape", 1536, 28, 12, 2, 8960, 151936)
SMALL_QWEN2 = ModelShape("small-qwen2", 128, 2, 4, 2, 256, 2048)


def ordinary_tokens(shape: ModelShape) -> list[int]:
    """Every token id a prompt may use: all but EOS."""
    return [token_id for token_id in range(shape.vocab_size) if token_id != EOS_TOKEN_ID]


def write_random_model(directory: Path, shape: ModelShape, dtype: torch.dtype, device: str) -> Path:
    """Writes config, safetensors weights (in `dtype`, drawn on `device`) and a generation config.

    Returns at once when `directory` already holds this shape in this dtype (a marker written last)."""
    marker = directory / _MARKER_NAME
    marker_text = json.dumps({"shape": dataclasses.asdict(shape), "dtype": str(dtype)}, sort_keys=True)
    if marker.is_file() and marker.read_text(encoding="utf-8") == marker_text:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    marker.unlink(missing_ok=True)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(_config(shape), dtype=dtype)
    _randomise(model, shape, torch.Generator(device).manual_seed(shape.seed))
    model.generation_config = GenerationConfig(eos_token_id=EOS_TOKEN_ID, pad_token_id=EOS_TOKEN_ID)
    model.save_pretrained(directory)
    marker.write_text(marker_text, encoding="utf-8")
    return directory


@cache
def load_reference_model(model_dir: Path, dtype: torch.dtype, device: str) -> PreTrainedModel:
    """The checkpoint as transformers runs it, SDPA attention: what the engine is compared with.
    Loaded once per run and kept."""
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=dtype, attn_implementation="sdpa", device_map={"": device}
    )
    return model.eval()


def _config(shape: ModelShape) -> Qwen2Config:
    return Qwen2Config(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_position_embeddings,
        tie_word_embeddings=True,
        use_sliding_window=False,
        bos_token_id=None,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=EOS_TOKEN_ID,
    )


@torch.no_grad()
def _randomise(model: PreTrainedModel, shape: ModelShape, generator: torch.Generator) -> None:
    embedding = model.get_input_embeddings().weight  # (V, H), also the LM head
    # Two blocks per layer (attention, MLP), each adding an output of RMS about `gain`.
    gain = _RESIDUAL_RMS / math.sqrt(2 * shape.num_layers)
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and module.weight is not embedding:
            scale = gain if name.endswith(_OUTPUT_PROJECTIONS) else 1.0
            module.weight.normal_(mean=0.0, std=scale / math.sqrt(module.in_features), generator=generator)
            if module.bias is not None:
                module.bias.zero_()
    # The final norm gives hidden states unit RMS, so this std gives logits of std _LOGIT_STD.
    embedding.normal_(mean=0.0, std=_LOGIT_STD / math.sqrt(shape.hidden_size), generator=generator)
    embedding[EOS_TOKEN_ID].zero_()
